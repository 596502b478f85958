"""`TcpHsmPort`: the switch's `HsmPort` over TCP to a payShield (or our simulator).

Each method is one host command on a pooled connection:

============================  ===========================================================
``generate_mac``              ``M6`` (ISO 9797-1 alg 3, padding 1, TAK key type 003, 16H)
``verify_mac``                ``M8`` for 4- or 8-byte MACs; others: ``M6`` and a local compare
``generate_mac_dukpt``        ``GW`` mode 0 (request or response MAC variant)
``verify_mac_dukpt``          ``GW`` mode 1 (4- or 8-byte MACs; others: mode 0 and compare)
``verify_pin_pvv``            ``DC`` (TPK, PVK, ISO format 0 = Thales ``01``)
``verify_pin_pvv_dukpt``      ``CM`` (verify a DUKPT PIN block against the PVV, no ``CI``)
``generate_working_key``      ``A0`` mode 1 under the TMK (scheme ``X``), with KCV
============================  ===========================================================

Error ``01`` is a mismatch (False / `PinCheck.MISMATCH`), ``20``/``23``/``24`` an unusable PIN
block (`PinCheck.INVALID_BLOCK`), anything else `HsmCommandError`. A timeout, a refused or
broken connection, or an answer that does not match the request is `HsmUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
from dataclasses import dataclass

from hsm_sim.hsm import MacDirection, PinCheck, WorkingKey
from hsm_sim.keys import KeyFormatError
from hsm_sim.pinblock import PinBlockError, account_number_iso_0
from hsm_sim.protocol import (
    FRAME_SIZE_MAX_DEFAULT,
    HostMessageParser,
    HostResponse,
    build_request,
    parse_response,
    response_code,
)
from switch.hsm_port import HsmUnavailable

__all__ = ["HsmCommandError", "TcpHsmPort"]

READ_SIZE = 4096
KSN_DESCRIPTOR = "605"
MESSAGE_LENGTH_MAX = 0xFFFF
_PIN_BLOCK_ERRORS = frozenset({"20", "23", "24"})
_DIRECTIONS = {MacDirection.REQUEST: "0", MacDirection.RESPONSE: "1"}


class HsmCommandError(RuntimeError):
    """The HSM answered with an error code the caller cannot treat as a business outcome."""

    def __init__(self, command: str, error_code: str) -> None:
        super().__init__(f"HSM command {command} failed with error {error_code}")
        self.command = command
        self.error_code = error_code


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: HostMessageParser

    def close(self) -> None:
        self.writer.close()


class TcpHsmPort:
    """`switch.hsm_port.HsmPort` over a pool of TCP connections to a payShield-style HSM.

    Connections are opened on demand, at most ``pool_size`` at a time, and reused; each
    request (waiting for a free connection included) must finish within ``timeout_s``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        header_length: int = 4,
        pool_size: int = 4,
        timeout_s: float = 2.0,
        frame_size_max: int = FRAME_SIZE_MAX_DEFAULT,
    ) -> None:
        assert pool_size >= 1, "the pool needs at least one connection"
        self.host = host
        self.port = port
        self.header_length = header_length
        self.timeout_s = timeout_s
        self.frame_size_max = frame_size_max
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Connection] = []
        self._headers = itertools.count()

    async def close(self) -> None:
        """Close the idle connections (busy ones close when their request ends)."""
        while self._idle:
            connection = self._idle.pop()
            connection.close()
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()

    def _header(self) -> bytes:
        # A counter in the header lets us check each answer belongs to its request.
        if not self.header_length:
            return b""
        number = next(self._headers) % 10**self.header_length
        return str(number).zfill(self.header_length).encode("ascii")

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Connection(
            reader, writer, HostMessageParser(self.header_length, self.frame_size_max)
        )

    async def _exchange(self, connection: _Connection, request: bytes) -> bytes:
        connection.writer.write(request)
        await connection.writer.drain()
        while (frame := connection.parser.next_frame()) is None:
            data = await connection.reader.read(READ_SIZE)
            if not data:
                raise ConnectionError("the HSM closed the connection")
            connection.parser.receive_data(data)
        return frame

    async def call(self, command: str, fields: bytes) -> HostResponse:
        """Send one command, return the parsed answer; `HsmUnavailable` on any transport issue."""
        header = self._header()
        request = build_request(header, command, fields)
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                connection = self._idle.pop() if self._idle else await self._connect()
                frame = await self._exchange(connection, request)
                response = parse_response(frame, self.header_length)
                if response.header != header or response.response_code.encode() != response_code(
                    command
                ):
                    raise ConnectionError(
                        f"answer {response.response_code} does not match {command}"
                    )
                self._idle.append(connection)
                connection = None
                return response
        except (TimeoutError, OSError, ValueError) as error:
            # ValueError covers FramingError: a peer we cannot frame is as good as gone.
            raise HsmUnavailable(f"HSM {self.host}:{self.port} {command}: {error!r}") from error
        finally:
            if connection is not None:
                connection.close()

    async def _ok(self, command: str, fields: str | bytes) -> HostResponse:
        raw = fields.encode("ascii") if isinstance(fields, str) else fields
        response = await self.call(command, raw)
        if response.error_code != "00":
            raise HsmCommandError(command, response.error_code)
        return response

    async def _check(self, command: str, fields: str | bytes) -> bool:
        raw = fields.encode("ascii") if isinstance(fields, str) else fields
        response = await self.call(command, raw)
        if response.error_code == "00":
            return True
        if response.error_code == "01":
            return False
        raise HsmCommandError(command, response.error_code)

    @staticmethod
    def _message(data: bytes) -> bytes:
        if len(data) > MESSAGE_LENGTH_MAX:
            raise ValueError(f"message of {len(data)} bytes is longer than {MESSAGE_LENGTH_MAX}")
        return f"{len(data):04X}".encode("ascii") + data

    # --- MACs -----------------------------------------------------------------------------

    async def generate_mac(self, tak_lmk: str, data: bytes) -> bytes:
        """See `switch.hsm_port.HsmPort.generate_mac` (``M6``)."""
        fields = f"00131003{tak_lmk}".encode("ascii") + self._message(data)
        response = await self._ok("M6", fields)
        return bytes.fromhex(response.body.decode("ascii"))

    async def verify_mac(self, tak_lmk: str, data: bytes, mac: bytes) -> bool:
        """See `switch.hsm_port.HsmPort.verify_mac` (``M8``)."""
        if len(mac) not in (4, 8):
            if not 4 <= len(mac) <= 8:
                return False
            expected = await self.generate_mac(tak_lmk, data)
            return hmac.compare_digest(expected[: len(mac)], mac)
        size = "0" if len(mac) == 4 else "1"
        fields = f"00{size}31003{tak_lmk}".encode("ascii") + self._message(data)
        return await self._check("M8", fields + mac.hex().upper().encode("ascii"))

    def _gw(self, mode: str, direction: MacDirection, size: str, bdk_lmk: str, ksn: bytes) -> str:
        if len(ksn) != 10:
            raise ValueError(f"TDES DUKPT KSN must be 10 bytes, got {len(ksn)}")
        return f"{mode}{_DIRECTIONS[direction]}{size}{bdk_lmk}{KSN_DESCRIPTOR}{ksn.hex().upper()}"

    async def generate_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, direction: MacDirection
    ) -> bytes:
        """See `switch.hsm_port.HsmPort.generate_mac_dukpt` (``GW`` mode 0)."""
        fields = self._gw("0", direction, "1", bdk_lmk, ksn).encode("ascii") + self._message(data)
        response = await self._ok("GW", fields)
        return bytes.fromhex(response.body.decode("ascii"))

    async def verify_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, mac: bytes, direction: MacDirection
    ) -> bool:
        """See `switch.hsm_port.HsmPort.verify_mac_dukpt` (``GW`` mode 1)."""
        if len(mac) not in (4, 8):
            if not 4 <= len(mac) <= 8:
                return False
            expected = await self.generate_mac_dukpt(bdk_lmk, ksn, data, direction)
            return hmac.compare_digest(expected[: len(mac)], mac)
        size = "0" if len(mac) == 4 else "1"
        head = self._gw("1", direction, size, bdk_lmk, ksn) + mac.hex().upper()
        return await self._check("GW", head.encode("ascii") + self._message(data))

    # --- PINs -----------------------------------------------------------------------------

    @staticmethod
    def _pin_fields(pin_block: bytes, pan: str, pvki: int, pvv: str) -> tuple[str, str] | None:
        """Hex block and account, or None when the block cannot be valid."""
        if not 0 <= pvki <= 9:
            raise ValueError(f"PVKI must be 0..9, got {pvki}")
        if len(pin_block) != 8:
            return None
        try:
            account = account_number_iso_0(pan)
        except PinBlockError:
            return None
        return pin_block.hex().upper(), account

    async def _pin_check(self, command: str, fields: str) -> PinCheck:
        response = await self.call(command, fields.encode("ascii"))
        if response.error_code == "00":
            return PinCheck.OK
        if response.error_code == "01":
            return PinCheck.MISMATCH
        if response.error_code in _PIN_BLOCK_ERRORS:
            return PinCheck.INVALID_BLOCK
        raise HsmCommandError(command, response.error_code)

    async def verify_pin_pvv(
        self, tpk_lmk: str, pvk_lmk: str, pin_block: bytes, pan: str, pvki: int, pvv: str
    ) -> PinCheck:
        """See `switch.hsm_port.HsmPort.verify_pin_pvv` (``DC``)."""
        parts = self._pin_fields(pin_block, pan, pvki, pvv)
        if parts is None:
            return PinCheck.INVALID_BLOCK
        if len(pvv) != 4 or not pvv.isdigit():
            return PinCheck.MISMATCH
        block, account = parts
        return await self._pin_check("DC", f"{tpk_lmk}{pvk_lmk}{block}01{account}{pvki}{pvv}")

    async def verify_pin_pvv_dukpt(
        self,
        bdk_lmk: str,
        ksn: bytes,
        pvk_lmk: str,
        pin_block: bytes,
        pan: str,
        pvki: int,
        pvv: str,
    ) -> PinCheck:
        """See `switch.hsm_port.HsmPort.verify_pin_pvv_dukpt` (``CM``)."""
        if len(ksn) != 10:
            raise ValueError(f"TDES DUKPT KSN must be 10 bytes, got {len(ksn)}")
        parts = self._pin_fields(pin_block, pan, pvki, pvv)
        if parts is None:
            return PinCheck.INVALID_BLOCK
        if len(pvv) != 4 or not pvv.isdigit():
            return PinCheck.MISMATCH
        block, account = parts
        fields = f"{bdk_lmk}{pvk_lmk}{KSN_DESCRIPTOR}{ksn.hex().upper()}{block}{account}{pvki}{pvv}"
        return await self._pin_check("CM", fields)

    # --- keys -----------------------------------------------------------------------------

    async def generate_working_key(self, tmk_lmk: str, key_type: str) -> WorkingKey:
        """See `switch.hsm_port.HsmPort.generate_working_key` (``A0`` mode 1, TMK, scheme X)."""
        if key_type not in ("002", "003"):
            raise KeyFormatError(f"working keys are TPK 002 or TAK 003, not {key_type!r}")
        response = await self._ok("A0", f"1{key_type}U;1{tmk_lmk}X")
        body = response.body.decode("ascii")
        if len(body) != 33 + 33 + 6 or body[33] != "X":
            raise HsmUnavailable(f"A0 answer of unexpected layout: {len(body)} characters")
        return WorkingKey(under_lmk=body[:33], under_tmk=body[34:66], kcv=body[66:])
