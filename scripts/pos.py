"""POS simulator: a terminal that builds real messages with real keys and talks to the switch.

Terminal-side code: it holds its own clear keys, as a terminal's secure module does (the demo
terminals' keys are published test values, see spec/demo-data.md). After a key exchange the new
working keys are kept in a small state file (``var/pos-state.json`` by default) together with
the STAN counter and the DUKPT transaction counter, so consecutive commands behave like one
terminal.

Library use (tests, load generator)::

    terminal = PosTerminal.demo("HNR00004")
    payload = terminal.purchase(pan="6362149173324546", pin="4321", amount=1_000_000)
    response = await PosClient.exchange("127.0.0.1", 8583, payload)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hsm_sim.des import decrypt_tdes_ecb, encrypt_tdes_ecb, kcv_tdes
from hsm_sim.dukpt import (
    TdesVariant,
    derive_ipek,
    derive_tdes_working_key,
    derive_transaction_key_from_ipek,
)
from hsm_sim.mac import generate_mac_iso9797_1_alg_3
from hsm_sim.pinblock import encode_pinblock_iso_0
from ledger import demo
from ledger.domain import mask_pan
from switch.codec import Message, decode, encode, encode_for_mac, mac_input
from switch.dialects import Dialect, get_dialect
from switch.dialects.base import Framing
from switch.framing import Framer, frame
from switch.requests import build_tlv, parse_tlv

DEFAULT_STATE = Path("var") / "pos-state.json"
DEFAULT_DIALECT = "shetab87"


@dataclass
class TerminalProfile:
    """What a terminal knows: ids, its merchant's data and its clear keys."""

    tid: str
    merchant_id: str
    mcc: str
    name: str
    acquirer_id: str = demo.ACQUIRER_ID
    tmk: str = ""
    tpk: str = ""
    tak: str = ""
    dukpt_ipek: str = ""
    dukpt_ksn: str = ""  # the KSN of the last transaction (counter included)
    stan: int = 0


@dataclass
class PosTerminal:
    """Builds requests and checks responses for one terminal."""

    profile: TerminalProfile
    dialect: Dialect = field(default_factory=lambda: get_dialect(DEFAULT_DIALECT))
    clock: Any = None  # Callable[[], datetime]; None = now (UTC)

    @classmethod
    def demo(cls, tid: str, state: dict[str, Any] | None = None) -> PosTerminal:
        """A demo-data terminal, with saved working keys and counters from ``state``."""
        terminals = {t.id: t for t in demo.TERMINALS}
        if tid not in terminals:
            raise ValueError(f"unknown demo terminal {tid!r}; known: {', '.join(terminals)}")
        t = terminals[tid]
        merchant = {m.id: m for m in demo.MERCHANTS}[t.merchant_id]
        profile = TerminalProfile(
            tid=t.id,
            merchant_id=t.merchant_id,
            mcc=merchant.mcc,
            name=merchant.name,
            tmk=t.tmk,
            tpk=t.tpk,
            tak=t.tak,
        )
        if t.dukpt:
            ksn = bytes.fromhex(demo.DUKPT_INITIAL_KSN)
            profile.dukpt_ipek = derive_ipek(bytes.fromhex(demo.BDK_CLEAR), ksn).hex().upper()
            profile.dukpt_ksn = demo.DUKPT_INITIAL_KSN
        for key, value in (state or {}).get(tid, {}).items():
            setattr(profile, key, value)
        return cls(profile)

    # --- counters ----------------------------------------------------------------------------

    def next_stan(self) -> str:
        """The next STAN (1..999999, wrapping)."""
        self.profile.stan = self.profile.stan % 999_999 + 1
        return f"{self.profile.stan:06d}"

    def _next_ksn(self) -> bytes:
        value = int(self.profile.dukpt_ksn, 16) + 1
        self.profile.dukpt_ksn = f"{value:020X}"
        return bytes.fromhex(self.profile.dukpt_ksn)

    def _now(self) -> datetime:
        return self.clock() if self.clock is not None else datetime.now(UTC)

    # --- requests ----------------------------------------------------------------------------

    def _base(self, stan: str | None) -> dict[int, str]:
        now = self._now()
        return {
            7: now.strftime("%m%d%H%M%S"),
            11: stan or self.next_stan(),
            12: now.strftime("%H%M%S"),
            13: now.strftime("%m%d"),
            41: self.profile.tid,
        }

    def card_request(
        self,
        *,
        processing_code: str,
        pan: str,
        pin: str | None,
        amount: int | None,
        expiry: str,
        stan: str | None = None,
        mti: str = "0200",
        extra: dict[int, str] | None = None,
        use_track2: bool = False,
    ) -> bytes:
        """A MACed card request (purchase, balance ...) as payload bytes."""
        fields = self._base(stan)
        fields.update(
            {
                3: processing_code,
                18: self.profile.mcc,
                22: "021" if use_track2 else "012",
                25: "14",
                32: self.profile.acquirer_id,
                42: self.profile.merchant_id.ljust(15),
                49: "364",
                43: self.profile.name[:40].ljust(40),
            }
        )
        if use_track2:
            fields[35] = f"{pan}={expiry}101"
        else:
            fields[2], fields[14] = pan, expiry
        if amount is not None:
            fields[4] = f"{amount:012d}"
        ksn = self._next_ksn() if self.profile.dukpt_ipek else None
        if ksn is not None:
            fields[53] = ksn.hex().upper()
        if pin is not None:
            fields[52] = self._pin_block(pin, pan, ksn).hex().upper()
        fields.update(extra or {})
        return self.sign(Message(mti, fields))

    def purchase(
        self,
        *,
        pan: str,
        pin: str | None,
        amount: int,
        expiry: str = "2812",
        stan: str | None = None,
    ) -> bytes:
        """A purchase (0200, 000000)."""
        return self.card_request(
            processing_code="000000", pan=pan, pin=pin, amount=amount, expiry=expiry, stan=stan
        )

    def balance(
        self, *, pan: str, pin: str | None, expiry: str = "2812", stan: str | None = None
    ) -> bytes:
        """A balance inquiry (0200, 310000)."""
        return self.card_request(
            processing_code="310000", pan=pan, pin=pin, amount=None, expiry=expiry, stan=stan
        )

    def preauth(
        self,
        *,
        pan: str,
        pin: str | None,
        amount: int,
        expiry: str = "2812",
        stan: str | None = None,
    ) -> bytes:
        """A pre-authorization (0100, 000000): a hold at check-in."""
        return self.card_request(
            processing_code="000000",
            pan=pan,
            pin=pin,
            amount=amount,
            expiry=expiry,
            stan=stan,
            mti="0100",
        )

    def completion(self, original: bytes, *, amount: int, stan: str | None = None) -> bytes:
        """The completion (0220) of the pre-authorization ``original`` at the final amount."""
        first = self.read(original)
        fields = self._base(stan)
        fields.update(
            {
                3: "000000",
                4: f"{amount:012d}",
                18: self.profile.mcc,
                25: "14",
                32: self.profile.acquirer_id,
                42: self.profile.merchant_id.ljust(15),
                49: "364",
                90: self._original_field(first),
            }
        )
        if first.has(2):
            fields[2] = first.fields[2]
        return self.sign(Message("0220", fields))

    def refund(
        self,
        *,
        pan: str,
        amount: int,
        original_rrn: str,
        expiry: str = "2812",
        stan: str | None = None,
    ) -> bytes:
        """A refund (0200, 200000) of the purchase whose response carried RRN ``original_rrn``."""
        return self.card_request(
            processing_code="200000",
            pan=pan,
            pin=None,
            amount=amount,
            expiry=expiry,
            stan=stan,
            extra={48: build_tlv({"ORN": original_rrn})},
        )

    def reversal(
        self,
        original: bytes,
        *,
        advice: bool = False,
        actual_amount: int | None = None,
        stan: str | None = None,
    ) -> bytes:
        """A reversal (0400) or reversal advice (0420) of ``original`` (a request payload);
        ``actual_amount`` makes it partial (field 95)."""
        first = self.read(original)
        fields = self._base(stan)
        for number in (2, 3, 4, 32, 42, 49):
            if first.has(number):
                fields[number] = first.fields[number]
        fields[90] = self._original_field(first)
        if actual_amount is not None:
            fields[95] = f"{actual_amount:012d}" + "0" * 30
        return self.sign(Message("0420" if advice else "0400", fields))

    def reconciliation(
        self,
        *,
        credits_count: int,
        debits_count: int,
        credits_amount: int,
        debits_amount: int,
        stan: str | None = None,
    ) -> bytes:
        """End-of-day terminal reconciliation (0500, 920000) with the terminal's own totals."""
        fields = self._base(stan)
        fields.update(
            {
                3: "920000",
                32: self.profile.acquirer_id,
                42: self.profile.merchant_id.ljust(15),
                74: f"{credits_count:010d}",
                76: f"{debits_count:010d}",
                86: f"{credits_amount:016d}",
                88: f"{debits_amount:016d}",
            }
        )
        return self.sign(Message("0500", fields))

    def _original_field(self, first: Message) -> str:
        from switch.requests import original_data_field

        return original_data_field(
            first.mti, first.fields[11], first.fields[7], first.get(32) or self.profile.acquirer_id
        )

    def network(self, code: str, *, stan: str | None = None, mac: bool | None = None) -> bytes:
        """An 0800 (001 sign-on, 002 sign-off, 101 key exchange, 301 echo)."""
        fields = self._base(stan)
        del fields[12], fields[13]
        fields[70] = code
        message = Message("0800", fields)
        if mac or (mac is None and code == "101"):
            return self.sign(message)
        return encode(self.wire(message), self.dialect)

    def wire(self, message: Message) -> Message:
        """A canonical (shetab87-shaped) message in this terminal's dialect."""
        return self.dialect.to_wire(message, None, self._now().year)

    def read(self, payload: bytes) -> Message:
        """Decode a payload of this terminal's dialect into the canonical shape."""
        return self.dialect.to_canonical(decode(payload, self.dialect))

    def sign(self, message: Message) -> bytes:
        """Encode ``message`` (canonical shape) in the terminal's dialect with its MAC under the
        TAK (or the DUKPT request-MAC key)."""
        if self.profile.dukpt_ipek and not message.has(53):
            # A DUKPT terminal MACs every message with a fresh transaction key (field 53).
            message = Message(message.mti, {**message.fields, 53: self._next_ksn().hex().upper()})
        wire = self.wire(message)
        raw = encode_for_mac(wire, self.dialect)
        return raw[:-8] + self._mac(raw[:-8], wire, response=False)

    def _pin_block(self, pin: str, pan: str, ksn: bytes | None) -> bytes:
        clear = encode_pinblock_iso_0(pin, pan)
        if ksn is not None:
            key = derive_tdes_working_key(self._dukpt_key(ksn), TdesVariant.PIN)
        else:
            key = bytes.fromhex(self.profile.tpk)
        return encrypt_tdes_ecb(key, clear)

    def _dukpt_key(self, ksn: bytes) -> bytes:
        return derive_transaction_key_from_ipek(bytes.fromhex(self.profile.dukpt_ipek), ksn)

    def _mac(self, data: bytes, message: Message, *, response: bool) -> bytes:
        if self.profile.dukpt_ipek:
            ksn = message.binary(53)
            if ksn is None:
                return b"\x00" * 8
            variant = TdesVariant.MAC_RESPONSE if response else TdesVariant.MAC_REQUEST
            key = derive_tdes_working_key(self._dukpt_key(ksn), variant)
        else:
            key = bytes.fromhex(self.profile.tak)
        return generate_mac_iso9797_1_alg_3(key, data, 1)

    # --- responses ---------------------------------------------------------------------------

    def check_response(
        self, raw: bytes, request: bytes | None = None
    ) -> tuple[Message, bool | None]:
        """Decode a response (into the canonical shape); return it and whether its MAC is right
        (None: it carries none)."""
        wire = decode(raw, self.dialect)
        message = self.dialect.to_canonical(wire)
        data = mac_input(raw, wire)
        if data is None:
            return message, None
        ksn_source = wire
        if request is not None and self.profile.dukpt_ipek:
            ksn_source = decode(request, self.dialect)
        return message, self._mac(data, ksn_source, response=True) == raw[-8:]

    def accept_new_keys(self, response: Message) -> tuple[str, str]:
        """Take the TPK and TAK of a key-exchange 0810 (checking their KCVs); return the KCVs."""
        tags = parse_tlv(response.get(48) or "")
        tmk = bytes.fromhex(self.profile.tmk)
        tpk = decrypt_tdes_ecb(tmk, bytes.fromhex(tags["TPK"]))
        tak = decrypt_tdes_ecb(tmk, bytes.fromhex(tags["TAK"]))
        if kcv_tdes(tpk).hex().upper() != tags["TKC"] or kcv_tdes(tak).hex().upper() != tags["AKC"]:
            raise ValueError("key exchange: check values do not match the keys received")
        self.profile.tpk, self.profile.tak = tpk.hex().upper(), tak.hex().upper()
        return tags["TKC"], tags["AKC"]


class PosClient:
    """A TCP connection to the switch that matches responses by MTI, field 11 and field 41."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        framing: Framing = Framing.ASCII4,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.framing = framing
        self.framer = Framer(framing, frame_size_max=9999)

    @classmethod
    async def connect(cls, host: str, port: int, framing: Framing = Framing.ASCII4) -> PosClient:
        """Open a connection."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, framing)

    async def send(self, payload: bytes) -> None:
        """Send one framed message."""
        self.writer.write(frame(payload, self.framing))
        await self.writer.drain()

    async def receive(self, timeout_s: float = 10.0) -> bytes:
        """The next response payload; TimeoutError after ``timeout_s``."""
        while True:
            payload = self.framer.next_frame()
            if payload is not None:
                return payload
            data = await asyncio.wait_for(self.reader.read(65536), timeout_s)
            if not data:
                raise ConnectionError("switch closed the connection")
            self.framer.receive_data(data)

    async def request(self, payload: bytes, timeout_s: float = 10.0) -> bytes:
        """Send one request and wait for one response."""
        await self.send(payload)
        return await self.receive(timeout_s)

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def load_state(path: Path) -> dict[str, Any]:
    """The simulator's saved terminal state (working keys, counters), or empty."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read POS state: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: POS state must be a JSON object")
    return data


def save_state(path: Path, terminal: PosTerminal, state: dict[str, Any]) -> None:
    """Save one terminal's working keys and counters (atomically)."""
    p = terminal.profile
    state[p.tid] = {"tpk": p.tpk, "tak": p.tak, "stan": p.stan, "dukpt_ksn": p.dukpt_ksn}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(temporary, path)


def tlv_text(value: str) -> str:
    """Field 48 rendered as ``TAG=value`` pairs."""
    try:
        return ", ".join(f"{k}={v}" for k, v in parse_tlv(value).items())
    except ValueError:
        return value


__all__ = [
    "PosClient",
    "PosTerminal",
    "TerminalProfile",
    "add_connection_arguments",
    "build_tlv",
    "card_expiry",
    "load_state",
    "save_state",
    "tlv_text",
]


def render(message: Message, mac_ok: bool | None, dialect: Dialect) -> str:
    """A decoded message as readable lines: field number, name, value (PAN masked)."""
    from switch.codes import meaning

    lines = [f"MTI {message.mti}"]
    for number in sorted(message.fields):
        spec = dialect.by_number[number]
        value = message.fields[number]
        if number == 2:
            value = mask_pan(value)
        elif number == 35:
            value = "(track 2 withheld)"
        elif number == 52:
            value = "(PIN block withheld)"
        elif number == 39:
            value = f"{value}  {meaning(value)}"
        elif number == 48:
            value = f"{value}  [{tlv_text(value)}]"
        elif number == 54:
            value = "  ".join(_amount_text(value[i : i + 20]) for i in range(0, len(value), 20))
        lines.append(f"  {number:>3}  {spec.name:<32} {value}")
    if mac_ok is not None:
        lines.append(f"  MAC {'verified' if mac_ok else 'WRONG'}")
    return "\n".join(lines)


AMOUNT_TYPES = {
    "01": "ledger",
    "02": "available",
    "90": "requested",
    "91": "discount",
    "92": "charged",
}


def _amount_text(block: str) -> str:
    account, kind, sign, amount = block[:2], block[2:4], block[7], int(block[8:20])
    purse = "all" if account == "00" else account
    return f"{purse}/{AMOUNT_TYPES.get(kind, kind)}={'-' if sign == 'D' else ''}{amount:,}"


def card_expiry(pan: str, expiry: str | None) -> str:
    """``expiry`` if given, else the demo card's expiry date for ``pan`` (ValueError if none)."""
    if expiry:
        return expiry
    for card in demo.CARDS:
        if card.pan == pan:
            return card.expiry
    raise ValueError("give --expiry YYMM (the PAN is not a demo card)")


def add_connection_arguments(
    sub: Any, *, terminal: str | None = "HNR00004", dialect: str | None = "shetab87"
) -> None:
    """The options every ``honar pos`` command shares: terminal, address, framing, dialect,
    response timeout and the terminal state file."""
    shown = terminal or "the scenario's, else HNR00004"
    sub.add_argument("--terminal", default=terminal, help=f"demo terminal id (default {shown})")
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=8583)
    sub.add_argument("--framing", default="ascii4", choices=["ascii4", "binary2"])
    sub.add_argument("--dialect", default=dialect, choices=["shetab87", "shetab93"])
    sub.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)"
    )
    sub.add_argument(
        "--state",
        default=str(DEFAULT_STATE),
        help="terminal state file (working keys, STAN, KSN)",
    )


def register(commands: Any) -> None:
    """Add ``honar pos ...`` to the command line."""
    from scripts.pos_scenario import add_pos_commands

    pos = commands.add_parser(
        "pos", help="POS simulator: one message, a scripted scenario or an interactive terminal"
    )
    pos_commands = pos.add_subparsers(dest="pos_command", required=True)
    for name, text in (
        ("purchase", "0200 purchase"),
        ("balance", "0200 balance inquiry"),
        ("echo", "0800 echo"),
        ("signon", "0800 sign-on"),
        ("signoff", "0800 sign-off"),
        ("keyexchange", "0800 key exchange"),
    ):
        sub = pos_commands.add_parser(name, help=text)
        add_connection_arguments(sub)
        sub.add_argument("--tamper-mac", action="store_true", help="flip a bit of the MAC")
        if name in ("purchase", "balance"):
            sub.add_argument("--pan", required=True)
            sub.add_argument("--pin", help="PIN entered on the PIN pad")
            sub.add_argument("--expiry", help="YYMM (default: the demo card's)")
        if name == "purchase":
            sub.add_argument("--amount", type=int, required=True, help="IRR")
        sub.set_defaults(func=run_command)
    add_pos_commands(pos_commands)


async def run_command(args: Any) -> int:
    """Carry out one ``honar pos`` command; print the exchange; return the exit code."""
    state_path = Path(args.state)
    state = load_state(state_path)
    terminal = PosTerminal.demo(args.terminal, state)
    terminal.dialect = get_dialect(args.dialect)
    framing = Framing(args.framing)
    command = args.pos_command
    if command in ("purchase", "balance"):
        expiry = card_expiry(args.pan, args.expiry)
        if command == "purchase":
            payload = terminal.purchase(
                pan=args.pan, pin=args.pin, amount=args.amount, expiry=expiry
            )
        else:
            payload = terminal.balance(pan=args.pan, pin=args.pin, expiry=expiry)
    else:
        code = {"echo": "301", "signon": "001", "signoff": "002", "keyexchange": "101"}[command]
        payload = terminal.network(code)
    if getattr(args, "tamper_mac", False):
        payload = payload[:-1] + bytes([payload[-1] ^ 0x01])
    request = terminal.read(payload)
    canonical = get_dialect("shetab87")  # messages are shown in the canonical shape
    print(
        f"-> {args.host}:{args.port} ({terminal.dialect.name})\n{render(request, None, canonical)}"
    )
    client = await PosClient.connect(args.host, args.port, framing)
    try:
        raw = await client.request(payload, timeout_s=args.timeout)
    finally:
        await client.close()
    response, mac_ok = terminal.check_response(raw, payload)
    print(f"<- {args.host}:{args.port}\n{render(response, mac_ok, canonical)}")
    if command == "keyexchange" and response.get(39) == "00":
        tkc, akc = terminal.accept_new_keys(response)
        print(f"new working keys in force (TPK check value {tkc}, TAK check value {akc})")
    save_state(state_path, terminal, state)
    return 0 if response.get(39) == "00" else 2
