"""payShield host commands over a variant LMK: one table, command code -> handler.

`HostCommands.handle` takes a command code and the raw request fields (after the code) and
returns a `CommandResult`: the 2-digit error code and the response fields. Bad input never
raises: a field that is missing, too short or of the wrong alphabet is error ``15``, a bad PIN
block format code ``23``, a key with a parity error ``10`` (source) or ``11`` (destination), an
unknown or disabled command ``68``; see ``docs/hsm.md`` for every layout.

Keys in requests are LMK-encrypted strings: ``U``/``X`` + 32 hex, ``T``/``Y`` + 48 hex, ``Z`` +
16 hex, or bare hex whose length the field decides (16 for TPK/ZPK/TAK, 32 for ZMK, PVK,
CVK and BDK). A "PIN under LMK" is our own 16-hex form: the ISO format 0 block for the account,
TDES-encrypted under LMK pair 02-03 (a real payShield's encoding is not public).

>>> commands = HostCommands(Lmk.test())
>>> commands.handle("BU", b"0200406FBB23A5214DF")
CommandResult(error_code='00', fields=b'0035BBE340A4B763')
>>> commands.handle("ZZ", b"").error_code
'68'
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hsm_sim.cvv import generate_cvv
from hsm_sim.des import (
    adjust_key_parity,
    check_key_parity,
    decrypt_tdes_ecb,
    encrypt_tdes_ecb,
    kcv_tdes,
)
from hsm_sim.dukpt import TdesVariant, derive_tdes_working_key, derive_transaction_key
from hsm_sim.keys import (
    KeyFormatError,
    Lmk,
    decrypt_key_under_lmk,
    encrypt_key_under_lmk,
    parse_key_type,
)
from hsm_sim.mac import generate_mac_iso9797_1_alg_1, generate_mac_iso9797_1_alg_3
from hsm_sim.pin import (
    generate_ibm3624_offset,
    generate_visa_pvv_account,
)
from hsm_sim.pinblock import (
    PinBlockError,
    decode_pinblock_ibm_3624,
    decode_pinblock_iso_0_account,
    decode_pinblock_iso_1,
    decode_pinblock_iso_3,
    encode_pinblock_ibm_3624,
    encode_pinblock_iso_0_account,
    encode_pinblock_iso_1,
    encode_pinblock_iso_3,
)

__all__ = [
    "COMMANDS",
    "FIRMWARE",
    "PIN_BLOCK_FORMATS",
    "CommandError",
    "CommandResult",
    "FieldReader",
    "HostCommands",
]

FIRMWARE = "HONAR-SIM"  # 9 characters, as the NC firmware field
TRAILER_LENGTH_MAX = 32
END_OF_MESSAGE = 0x19
LMK_ID_DEFAULT = "00"
KEY_DRAWS_MAX = 16

# Thales PIN block format codes (they are not ISO numbers).
FORMAT_ISO_0 = "01"
FORMAT_IBM_3624 = "03"
FORMAT_ISO_1 = "05"
FORMAT_ISO_3 = "47"
FORMAT_ISO_4 = "48"
PIN_BLOCK_FORMATS = {
    FORMAT_ISO_0: "ISO 9564-1 format 0 (ANSI X9.8)",
    FORMAT_IBM_3624: "IBM 3624 / Diebold (PIN, F padding)",
    FORMAT_ISO_1: "ISO 9564-1 format 1",
    FORMAT_ISO_3: "ISO 9564-1 format 3",
    FORMAT_ISO_4: "ISO 9564-1 format 4 (AES; recognised, answered 69 with TDES keys)",
}

KEY_TYPE_ZMK = "000"
KEY_TYPE_ZPK = "001"
KEY_TYPE_TPK = "002"  # also TMK and PVK
KEY_TYPE_TAK = "003"
KEY_TYPE_ZAK = "008"
KEY_TYPE_BDK = "009"
KEY_TYPE_CVK = "402"

# Scheme tag -> key length in bytes; "" = untagged (length from the field).
_SCHEME_LENGTHS = {"Z": 8, "U": 16, "X": 16, "T": 24, "Y": 24}
_HEX = frozenset("0123456789ABCDEFabcdef")
_VARIANTS_U = bytes.fromhex("A65A")
_VARIANTS_T = bytes.fromhex("6ADE2B")


class CommandError(Exception):
    """A request the HSM answers with a non-zero error code (never escapes `handle`)."""

    def __init__(self, error_code: str, reason: str = "") -> None:
        super().__init__(f"{error_code}: {reason}" if reason else error_code)
        self.error_code = error_code
        self.reason = reason


@dataclass(frozen=True)
class CommandResult:
    """Error code (``00`` ok) and the response fields that follow it."""

    error_code: str
    fields: bytes = b""


class FieldReader:
    """Reads a request's fields left to right; every shortfall is `CommandError` ``15``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.position

    def peek(self, count: int = 1) -> bytes:
        """The next ``count`` bytes without consuming them."""
        return self.data[self.position : self.position + count]

    def binary(self, count: int, what: str) -> bytes:
        """Exactly ``count`` raw bytes."""
        if count < 0 or self.remaining() < count:
            raise CommandError(
                "15",
                f"{what}: needs {count} bytes at offset {self.position}, {self.remaining()} left",
            )
        value = self.data[self.position : self.position + count]
        self.position += count
        return value

    def text(self, count: int, what: str) -> str:
        """Exactly ``count`` ASCII characters."""
        raw = self.binary(count, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise CommandError("15", f"{what}: not ASCII at offset {self.position}") from None

    def hex(self, count: int, what: str) -> str:
        """Exactly ``count`` hexadecimal characters, returned in upper case."""
        value = self.text(count, what)
        if any(c not in _HEX for c in value):
            raise CommandError("15", f"{what}: {value!r} is not hexadecimal")
        return value.upper()

    def digits(self, count: int, what: str) -> str:
        """Exactly ``count`` decimal digits."""
        value = self.text(count, what)
        if not value.isdigit():
            raise CommandError("15", f"{what}: {value!r} is not decimal")
        return value

    def choice(self, count: int, what: str, allowed: Iterable[str], error_code: str = "15") -> str:
        """A fixed-length code that must be one of ``allowed`` (else ``error_code``)."""
        value = self.text(count, what)
        if value.upper() not in allowed:
            raise CommandError(error_code, f"{what}: {value!r} is not one of {sorted(allowed)}")
        return value.upper()

    def until(self, delimiter: bytes, what: str, length_max: int) -> str:
        """ASCII text up to (not including) ``delimiter``, which is consumed."""
        end = self.data.find(delimiter, self.position, self.position + length_max + 1)
        if end < 0:
            raise CommandError("15", f"{what}: no {delimiter!r} within {length_max} characters")
        value = self.text(end - self.position, what)
        self.position += len(delimiter)
        return value

    def key(self, what: str, bare_length: int = 16) -> str:
        """An LMK- or ZMK-encrypted key: scheme tag + hex, or ``bare_length`` bare hex."""
        tag = self.peek().decode("ascii", errors="replace").upper()
        if tag in _SCHEME_LENGTHS:
            self.position += 1
            return tag + self.hex(2 * _SCHEME_LENGTHS[tag], what)
        if tag == "K":
            raise CommandError("12", f"{what}: user-storage keys are not supported")
        if tag == "S":
            raise CommandError("26", f"{what}: key-block (S) keys need a key-block LMK")
        if tag and tag in _HEX:
            return self.hex(bare_length, what)
        raise CommandError("15", f"{what}: expected a key at offset {self.position}")

    def rest(self) -> bytes:
        """Everything not read yet."""
        return self.binary(self.remaining(), "rest")

    def finish(self) -> None:
        """Accept an optional ``%`` + 2-digit LMK id and X'19' + trailer; nothing else."""
        if self.peek() == b"%":
            self.position += 1
            lmk_id = self.digits(2, "LMK identifier")
            if lmk_id != LMK_ID_DEFAULT:
                raise CommandError("13", f"LMK identifier {lmk_id} is not loaded")
        if self.peek() == bytes([END_OF_MESSAGE]):
            self.position += 1
            trailer = self.rest()
            if len(trailer) > TRAILER_LENGTH_MAX:
                raise CommandError("15", f"trailer of {len(trailer)} characters is too long")
            return
        if self.remaining():
            raise CommandError(
                "15", f"{self.remaining()} unexpected bytes at offset {self.position}"
            )


Handler = Callable[["HostCommands", FieldReader], CommandResult]


def _ok(*fields: str | bytes) -> CommandResult:
    return CommandResult(
        "00", b"".join(f.encode("ascii") if isinstance(f, str) else f for f in fields)
    )


def _part_keys(key: bytes, scheme: str, length: int) -> list[bytes]:
    """One key per 8-byte part under the double/triple-length variant scheme (tags U and T)."""
    if scheme == "U":
        variants = _VARIANTS_U
    elif scheme == "T":
        variants = _VARIANTS_T
    else:
        return [key] * (length // 8)
    return [key[:8] + bytes([key[8] ^ v]) + key[9:] for v in variants]


def _ecb_parts(key: bytes, data: bytes, scheme: str, *, encrypt: bool) -> bytes:
    operation = encrypt_tdes_ecb if encrypt else decrypt_tdes_ecb
    parts = _part_keys(key, scheme, len(data))
    return b"".join(operation(k, data[8 * i : 8 * i + 8]) for i, k in enumerate(parts))


def _default_scheme(length: int) -> str:
    return {8: "", 16: "U", 24: "T"}[length]


def _scheme_length(scheme: str, what: str) -> int:
    if scheme not in _SCHEME_LENGTHS:
        raise CommandError("26", f"{what}: invalid key scheme {scheme!r}")
    return _SCHEME_LENGTHS[scheme]


def _kcv(clear: bytes, kcv_type: str) -> str:
    """KCV type 0 = 16 hex (legacy), 1 = 6 hex."""
    return kcv_tdes(clear, 8 if kcv_type == "0" else 3).hex().upper()


def _validation_data(template: str, account: str) -> str:
    """IBM 3624 validation data: an ``N`` marks where the last 5 account digits go."""
    if template.count("N") > 1:
        raise CommandError("15", "PIN validation data has more than one N")
    data = template.replace("N", account[-5:])
    if any(c not in _HEX for c in data):
        raise CommandError("15", f"PIN validation data {template!r} is not hexadecimal")
    return data.upper()


def _offset_digits(offset: str, check_length: int) -> str:
    digits = offset[:check_length]
    if not digits.isdigit() or any(c not in "Ff" for c in offset[check_length:]):
        raise CommandError("15", f"offset {offset!r} must be {check_length} digits then F")
    return digits


class HostCommands:
    """The simulated HSM's host-command processor (pure: no I/O, no clock).

    ``enabled`` restricts the commands answered (others get ``68``); ``random_bytes`` is the
    source for generated keys and PIN block fill.
    """

    def __init__(
        self,
        lmk: Lmk,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        enabled: Iterable[str] | None = None,
        firmware: str = FIRMWARE,
        sockets_max: int = 64,
    ) -> None:
        assert len(firmware) == 9, "the firmware field is 9 characters"
        self.lmk = lmk
        self.random_bytes = random_bytes
        self.enabled = frozenset(COMMANDS if enabled is None else enabled)
        self.firmware = firmware
        self.sockets_max = sockets_max

    def handle(self, command: str, body: bytes) -> CommandResult:
        """Run one command; any problem with the request becomes an error code."""
        handler = COMMANDS.get(command)
        if handler is None or command not in self.enabled:
            return CommandResult("68")
        reader = FieldReader(body)
        try:
            return handler(self, reader)
        except CommandError as error:
            return CommandResult(error.error_code)
        except ValueError:
            # KeyFormatError, PinBlockError and the primitives' own checks: values the
            # request supplied that the algorithms reject are invalid input.
            return CommandResult("15")

    # --- keys ---------------------------------------------------------------------------

    def clear_key(self, key_string: str, key_type: str, parity_error: str) -> bytes:
        """Decrypt a key under the LMK; odd parity is required (else ``parity_error``)."""
        try:
            clear = decrypt_key_under_lmk(self.lmk, key_string, key_type)
        except KeyFormatError as error:
            raise CommandError("15", str(error)) from None
        if not check_key_parity(clear):
            raise CommandError(parity_error, f"key type {key_type} parity error")
        return clear

    def under_lmk(self, clear: bytes, key_type: str, scheme: str = "") -> str:
        """Encrypt under the LMK; scheme ``Z`` and untagged single keys come out untagged."""
        scheme = scheme or _default_scheme(len(clear))
        if scheme == "Z":
            scheme = ""
        try:
            return encrypt_key_under_lmk(self.lmk, clear, key_type, scheme)
        except KeyFormatError as error:
            raise CommandError("27", str(error)) from None

    def random_key(self, length: int) -> bytes:
        """A random odd-parity DES key; multi-length keys have distinct halves."""
        for _draw in range(KEY_DRAWS_MAX):
            key = adjust_key_parity(self.random_bytes(length))
            parts = {key[i : i + 8] for i in range(0, length, 8)}
            if len(parts) == length // 8:
                return key
        raise RuntimeError("random source gave no usable key")  # a broken source only

    @staticmethod
    def under_zmk(zmk: bytes, clear: bytes, scheme: str) -> str:
        """Encrypt a key for transport under a ZMK/TMK: ``U``/``T`` variants, ``X``/``Y`` ECB."""
        scheme = scheme or _default_scheme(len(clear)) or "Z"
        length = _scheme_length(scheme, "key scheme (ZMK)")
        if length != len(clear):
            raise CommandError("27", f"scheme {scheme} does not fit a {len(clear)}-byte key")
        tag = "" if scheme == "Z" else scheme
        return tag + _ecb_parts(zmk, adjust_key_parity(clear), scheme, encrypt=True).hex().upper()

    @staticmethod
    def from_zmk(zmk: bytes, key_string: str) -> bytes:
        """Decrypt a key received under a ZMK/TMK (parity not yet checked)."""
        scheme = key_string[0] if key_string[0] in _SCHEME_LENGTHS else ""
        data = bytes.fromhex(key_string[len(scheme) :])
        return _ecb_parts(zmk, data, scheme, encrypt=False)

    # --- PINs ---------------------------------------------------------------------------

    def decode_pin(self, key: bytes, block_hex: str, block_format: str, account: str) -> str:
        """PIN from an encrypted PIN block; ``20`` if the block is invalid for its format."""
        check_format(block_format)
        clear = decrypt_tdes_ecb(key, bytes.fromhex(block_hex))
        try:
            if block_format == FORMAT_ISO_0:
                return decode_pinblock_iso_0_account(clear, account)
            if block_format == FORMAT_IBM_3624:
                return decode_pinblock_ibm_3624(clear)
            if block_format == FORMAT_ISO_1:
                return decode_pinblock_iso_1(clear)
            return decode_pinblock_iso_3(clear, account + "0")
        except PinBlockError as error:
            raise CommandError("20", str(error)) from None

    def encode_pin(self, key: bytes, pin: str, block_format: str, account: str) -> str:
        """Encrypted PIN block of ``pin``; ``24`` if the PIN length is out of range."""
        check_format(block_format)
        try:
            if block_format == FORMAT_ISO_0:
                clear = encode_pinblock_iso_0_account(pin, account)
            elif block_format == FORMAT_IBM_3624:
                clear = encode_pinblock_ibm_3624(pin)
            elif block_format == FORMAT_ISO_1:
                clear = encode_pinblock_iso_1(pin, self.random_bytes)
            else:
                clear = encode_pinblock_iso_3(pin, account + "0", self.random_bytes)
        except PinBlockError as error:
            raise CommandError("24", str(error)) from None
        return encrypt_tdes_ecb(key, clear).hex().upper()

    def pin_to_lmk(self, pin: str, account: str) -> str:
        """PIN under LMK pair 02-03: the format 0 block for the account, TDES-ECB, 16 hex."""
        try:
            block = encode_pinblock_iso_0_account(pin, account)
        except PinBlockError as error:
            raise CommandError("24", str(error)) from None
        return encrypt_tdes_ecb(self.lmk.pair(1), block).hex().upper()

    def pin_from_lmk(self, pin_lmk: str, account: str) -> str:
        """Inverse of `pin_to_lmk`; ``14`` if it does not decode for this account."""
        block = decrypt_tdes_ecb(self.lmk.pair(1), bytes.fromhex(pin_lmk))
        try:
            return decode_pinblock_iso_0_account(block, account)
        except PinBlockError as error:
            raise CommandError("14", str(error)) from None

    def dukpt_pin_key(self, bdk_lmk: str, ksn_hex: str) -> bytes:
        """The TDES DUKPT PIN key of a KSN (BDK parity error: ``10``)."""
        return derive_tdes_working_key(self.dukpt_key(bdk_lmk, ksn_hex), TdesVariant.PIN)

    def dukpt_key(self, bdk_lmk: str, ksn_hex: str) -> bytes:
        """The TDES DUKPT transaction key (before any variant)."""
        bdk = self.clear_key(bdk_lmk, KEY_TYPE_BDK, "10")
        if len(bdk) != 16:
            raise CommandError("27", "the BDK must be double length")
        return derive_transaction_key(bdk, bytes.fromhex(ksn_hex))


def check_format(block_format: str) -> None:
    """``23`` for unknown PIN block format codes, ``69`` for ISO 4 (AES) with TDES keys."""
    if block_format == FORMAT_ISO_4:
        raise CommandError("69", "format 48 (ISO 4) needs AES keys")
    if block_format not in PIN_BLOCK_FORMATS:
        raise CommandError("23", f"PIN block format {block_format!r} is not supported")


def _pin_format(reader: FieldReader, what: str = "PIN block format") -> str:
    value = reader.digits(2, what)
    check_format(value)
    return value


def _account(reader: FieldReader) -> str:
    return reader.digits(12, "account number")


def _kcv_options(reader: FieldReader) -> tuple[str, str, str]:
    """Optional ``;`` key scheme (ZMK), key scheme (LMK), KCV type."""
    if reader.peek() != b";":
        return "", "", ""
    reader.binary(1, ";")
    zmk_scheme = reader.text(1, "key scheme (ZMK)").upper()
    lmk_scheme = reader.text(1, "key scheme (LMK)").upper()
    kcv_type = reader.choice(1, "KCV type", {"0", "1"})
    return zmk_scheme, lmk_scheme, kcv_type


def _pvk(commands: HostCommands, reader: FieldReader, parity_error: str) -> bytes:
    pvk = commands.clear_key(reader.key("PVK", 32), KEY_TYPE_TPK, parity_error)
    if len(pvk) != 16:
        raise CommandError("27", "the PVK must be a double-length pair")
    return pvk


def _pvki(reader: FieldReader) -> int:
    return int(reader.digits(1, "PVKI"))


def _compare(expected: str, received: str) -> CommandResult:
    if hmac.compare_digest(expected.encode("ascii"), received.encode("ascii")):
        return CommandResult("00")
    return CommandResult("01")


# --- diagnostics -------------------------------------------------------------------------


def _nc(commands: HostCommands, reader: FieldReader) -> CommandResult:
    reader.finish()
    return _ok(commands.lmk.check_value(), commands.firmware)


def _no(commands: HostCommands, reader: FieldReader) -> CommandResult:
    mode = reader.choice(2, "status mode", {"00", "01"})
    reader.finish()
    if mode == "01":
        return _ok("0")  # not a PCI HSM
    # I/O buffer size code, Ethernet type, TCP sockets, firmware, two reserved fields.
    return _ok("2", "1", f"{min(commands.sockets_max, 99):02d}", commands.firmware, "0", "0000")


def _b2(commands: HostCommands, reader: FieldReader) -> CommandResult:
    length = int(reader.hex(4, "echo length"), 16)
    if reader.remaining() < length:
        raise CommandError(
            "80", f"echo length {length} exceeds the {reader.remaining()} bytes sent"
        )
    data = reader.binary(length, "echo data")
    reader.finish()
    return _ok(data)


def _bu(commands: HostCommands, reader: FieldReader) -> CommandResult:
    code = reader.hex(2, "key type code")
    flag = reader.choice(1, "key length flag", {"0", "1", "2"}, "05")
    key = reader.key("key", {"0": 16, "1": 32, "2": 48}[flag])
    key_type = "0" + code
    kcv_type = "0"
    if reader.peek() == b";":
        reader.binary(1, ";")
        key_type = reader.hex(3, "key type")
        if reader.peek() == b";":
            reader.binary(1, ";")
            reader.text(1, "reserved")
            kcv_type = reader.choice(1, "KCV type", {"0", "1"})
    reader.finish()
    try:
        parse_key_type(key_type)
    except KeyFormatError:
        raise CommandError("04", f"key type {key_type!r}") from None
    return _ok(_kcv(commands.clear_key(key, key_type, "10"), kcv_type))


# --- key management ----------------------------------------------------------------------


def _key_type(reader: FieldReader) -> str:
    key_type = reader.hex(3, "key type")
    try:
        parse_key_type(key_type)
    except KeyFormatError:
        raise CommandError("04", f"invalid key type {key_type!r}") from None
    return key_type


def _a0(commands: HostCommands, reader: FieldReader) -> CommandResult:
    mode = reader.choice(1, "mode", {"0", "1"})
    key_type = _key_type(reader)
    scheme = reader.text(1, "key scheme (LMK)").upper()
    length = _scheme_length(scheme, "key scheme (LMK)")
    wrap: tuple[bytes, str] | None = None
    if mode == "1":
        wrap_type = KEY_TYPE_ZMK
        if reader.peek() == b";":
            reader.binary(1, ";")
            flag = reader.choice(1, "ZMK/TMK flag", {"0", "1"})
            wrap_type = KEY_TYPE_ZMK if flag == "0" else KEY_TYPE_TPK
        wrapping_key = commands.clear_key(reader.key("ZMK/TMK", 32), wrap_type, "10")
        wrap_scheme = reader.text(1, "key scheme (ZMK/TMK)").upper()
        _scheme_length(wrap_scheme, "key scheme (ZMK/TMK)")
        wrap = (wrapping_key, wrap_scheme)
    reader.finish()
    clear = commands.random_key(length)
    fields = [commands.under_lmk(clear, key_type, scheme)]
    if wrap is not None:
        fields.append(HostCommands.under_zmk(wrap[0], clear, wrap[1]))
    return _ok(*fields, _kcv(clear, "1"))


def _imported(zmk: bytes, key_string: str) -> tuple[bytes, str]:
    """Clear imported key (parity forced) and ``01`` if its parity had to be fixed."""
    clear = HostCommands.from_zmk(zmk, key_string)
    return adjust_key_parity(clear), "00" if check_key_parity(clear) else "01"


def _a6(commands: HostCommands, reader: FieldReader) -> CommandResult:
    key_type = _key_type(reader)
    zmk = commands.clear_key(reader.key("ZMK", 32), KEY_TYPE_ZMK, "10")
    key_string = reader.key("key (ZMK)", 16)
    scheme = reader.text(1, "key scheme (LMK)").upper()
    _scheme_length(scheme, "key scheme (LMK)")
    if reader.peek().isdigit():
        reader.digits(1, "Atalla variant")  # accepted, not applied
    reader.finish()
    clear, code = _imported(zmk, key_string)
    return CommandResult(
        code, (commands.under_lmk(clear, key_type, scheme) + _kcv(clear, "1")).encode()
    )


def _a8(commands: HostCommands, reader: FieldReader) -> CommandResult:
    key_type = _key_type(reader)
    zmk = commands.clear_key(reader.key("ZMK", 32), KEY_TYPE_ZMK, "10")
    key = commands.clear_key(reader.key("key (LMK)", 16), key_type, "11")
    scheme = reader.text(1, "key scheme (ZMK)").upper()
    reader.finish()
    if key_type == KEY_TYPE_ZMK:
        raise CommandError("29", "a ZMK is not exported under another ZMK here")
    return _ok(HostCommands.under_zmk(zmk, key, scheme), _kcv(key, "1"))


def _fa(commands: HostCommands, reader: FieldReader) -> CommandResult:
    zmk = commands.clear_key(reader.key("ZMK", 32), KEY_TYPE_ZMK, "10")
    key_string = reader.key("ZPK (ZMK)", 16)
    _zmk_scheme, lmk_scheme, kcv_type = _kcv_options(reader)
    reader.finish()
    clear, code = _imported(zmk, key_string)
    under_lmk = commands.under_lmk(clear, KEY_TYPE_ZPK, lmk_scheme)
    return CommandResult(code, (under_lmk + _kcv(clear, kcv_type or "0")).encode())


def _gc(commands: HostCommands, reader: FieldReader) -> CommandResult:
    zmk = commands.clear_key(reader.key("ZMK", 32), KEY_TYPE_ZMK, "10")
    zpk = commands.clear_key(reader.key("ZPK (LMK)", 16), KEY_TYPE_ZPK, "11")
    zmk_scheme, _lmk_scheme, kcv_type = _kcv_options(reader)
    reader.finish()
    return _ok(HostCommands.under_zmk(zmk, zpk, zmk_scheme), _kcv(zpk, kcv_type or "0"))


def _ia(commands: HostCommands, reader: FieldReader) -> CommandResult:
    zmk = commands.clear_key(reader.key("ZMK", 32), KEY_TYPE_ZMK, "10")
    zmk_scheme, lmk_scheme, kcv_type = _kcv_options(reader)
    reader.finish()
    length = _scheme_length(lmk_scheme, "key scheme (LMK)") if lmk_scheme else 16
    clear = commands.random_key(length)
    under_zmk = HostCommands.under_zmk(zmk, clear, zmk_scheme or ("X" if length == 16 else ""))
    return _ok(
        under_zmk, commands.under_lmk(clear, KEY_TYPE_ZPK, lmk_scheme), _kcv(clear, kcv_type or "0")
    )


# --- PIN translation ---------------------------------------------------------------------


def _translate(commands: HostCommands, reader: FieldReader, source_type: str) -> CommandResult:
    source = commands.clear_key(reader.key("source key", 16), source_type, "10")
    destination = commands.clear_key(reader.key("destination ZPK", 16), KEY_TYPE_ZPK, "11")
    pin_length_max = int(reader.digits(2, "maximum PIN length"))
    block = reader.hex(16, "PIN block")
    source_format = _pin_format(reader, "source PIN block format")
    destination_format = _pin_format(reader, "destination PIN block format")
    account = _account(reader)
    reader.finish()
    pin = commands.decode_pin(source, block, source_format, account)
    if len(pin) > pin_length_max:
        raise CommandError("24", f"PIN of {len(pin)} digits exceeds {pin_length_max}")
    out = commands.encode_pin(destination, pin, destination_format, account)
    return _ok(f"{len(pin):02d}", out, destination_format)


def _ca(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _translate(commands, reader, KEY_TYPE_TPK)


def _cc(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _translate(commands, reader, KEY_TYPE_ZPK)


def _dukpt_translate(
    commands: HostCommands, reader: FieldReader, *, with_source_format: bool
) -> CommandResult:
    bdk = reader.key("BDK", 32)
    destination = commands.clear_key(reader.key("ZPK", 16), KEY_TYPE_ZPK, "11")
    reader.hex(3, "KSN descriptor")
    ksn = reader.hex(20, "KSN")
    block = reader.hex(16, "PIN block")
    if with_source_format:
        source_format = _pin_format(reader, "source PIN block format")
        if source_format != FORMAT_ISO_0:
            raise CommandError("23", "DUKPT PIN blocks are ISO format 0")
    destination_format = _pin_format(reader, "destination PIN block format")
    account = _account(reader)
    reader.finish()
    pin_key = commands.dukpt_pin_key(bdk, ksn)
    pin = commands.decode_pin(pin_key, block, FORMAT_ISO_0, account)
    out = commands.encode_pin(destination, pin, destination_format, account)
    return _ok(f"{len(pin):02d}", out, destination_format)


def _ci(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _dukpt_translate(commands, reader, with_source_format=False)


def _g0(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _dukpt_translate(commands, reader, with_source_format=True)


def _to_lmk(commands: HostCommands, reader: FieldReader, key_type: str) -> CommandResult:
    key = commands.clear_key(reader.key("PIN key", 16), key_type, "10")
    block = reader.hex(16, "PIN block")
    block_format = _pin_format(reader)
    account = _account(reader)
    reader.finish()
    pin = commands.decode_pin(key, block, block_format, account)
    return _ok(commands.pin_to_lmk(pin, account))


def _je(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _to_lmk(commands, reader, KEY_TYPE_ZPK)


def _jc(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _to_lmk(commands, reader, KEY_TYPE_TPK)


def _jg(commands: HostCommands, reader: FieldReader) -> CommandResult:
    zpk = commands.clear_key(reader.key("ZPK", 16), KEY_TYPE_ZPK, "11")
    block_format = _pin_format(reader)
    account = _account(reader)
    pin_lmk = reader.hex(16, "PIN (LMK)")
    reader.finish()
    pin = commands.pin_from_lmk(pin_lmk, account)
    return _ok(commands.encode_pin(zpk, pin, block_format, account))


# --- PIN verification and PVV / offset generation ----------------------------------------


def _ibm_fields(reader: FieldReader) -> tuple[int, str, str, str]:
    check_length = int(reader.digits(2, "check length"))
    if not 4 <= check_length <= 12:
        raise CommandError("15", f"check length {check_length} is outside 04..12")
    account = _account(reader)
    table = reader.text(16, "decimalisation table")
    if not table.isdigit():
        raise CommandError("25", "decimalisation table must be 16 decimal digits")
    validation = _validation_data(reader.text(12, "PIN validation data"), account)
    return check_length, account, table, validation


def _verify_ibm(commands: HostCommands, reader: FieldReader, key_type: str) -> CommandResult:
    key = commands.clear_key(reader.key("PIN key", 16), key_type, "10")
    pvk = commands.clear_key(reader.key("PVK", 16), KEY_TYPE_TPK, "11")
    pin_length_max = int(reader.digits(2, "maximum PIN length"))
    block = reader.hex(16, "PIN block")
    block_format = _pin_format(reader)
    check_length, account, table, validation = _ibm_fields(reader)
    offset = _offset_digits(reader.text(12, "offset"), check_length)
    reader.finish()
    pin = commands.decode_pin(key, block, block_format, account)
    if len(pin) > pin_length_max:
        raise CommandError("24", f"PIN of {len(pin)} digits exceeds {pin_length_max}")
    if len(pin) < check_length:
        return CommandResult("01")
    expected = generate_ibm3624_offset(pvk, validation, table, pin[:check_length])
    return _compare(expected, offset)


def _da(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _verify_ibm(commands, reader, KEY_TYPE_TPK)


def _ea(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _verify_ibm(commands, reader, KEY_TYPE_ZPK)


def _verify_pvv(commands: HostCommands, reader: FieldReader, key_type: str) -> CommandResult:
    key = commands.clear_key(reader.key("PIN key", 16), key_type, "10")
    pvk = _pvk(commands, reader, "11")
    block = reader.hex(16, "PIN block")
    block_format = _pin_format(reader)
    account = _account(reader)
    pvki = _pvki(reader)
    pvv = reader.digits(4, "PVV")
    reader.finish()
    pin = commands.decode_pin(key, block, block_format, account)
    return _compare(generate_visa_pvv_account(pvk, account, pvki, pin), pvv)


def _dc(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _verify_pvv(commands, reader, KEY_TYPE_TPK)


def _ec(commands: HostCommands, reader: FieldReader) -> CommandResult:
    return _verify_pvv(commands, reader, KEY_TYPE_ZPK)


def _cm(commands: HostCommands, reader: FieldReader) -> CommandResult:
    bdk = reader.key("BDK", 32)
    pvk = _pvk(commands, reader, "11")
    reader.hex(3, "KSN descriptor")
    ksn = reader.hex(20, "KSN")
    block = reader.hex(16, "PIN block")
    account = _account(reader)
    pvki = _pvki(reader)
    pvv = reader.digits(4, "PVV")
    reader.finish()
    pin = commands.decode_pin(commands.dukpt_pin_key(bdk, ksn), block, FORMAT_ISO_0, account)
    return _compare(generate_visa_pvv_account(pvk, account, pvki, pin), pvv)


def _de(commands: HostCommands, reader: FieldReader) -> CommandResult:
    pvk = commands.clear_key(reader.key("PVK", 16), KEY_TYPE_TPK, "10")
    pin_lmk = reader.hex(16, "PIN (LMK)")
    check_length, account, table, validation = _ibm_fields(reader)
    reader.finish()
    pin = commands.pin_from_lmk(pin_lmk, account)
    if len(pin) < check_length:
        raise CommandError("24", f"PIN of {len(pin)} digits is shorter than the check length")
    offset = generate_ibm3624_offset(pvk, validation, table, pin)
    return _ok(offset.ljust(12, "F"))


def _dg(commands: HostCommands, reader: FieldReader) -> CommandResult:
    pvk = _pvk(commands, reader, "10")
    pin_lmk = reader.hex(16, "PIN (LMK)")
    account = _account(reader)
    pvki = _pvki(reader)
    reader.finish()
    pin = commands.pin_from_lmk(pin_lmk, account)
    return _ok(generate_visa_pvv_account(pvk, account, pvki, pin))


def _pin_key_type(reader: FieldReader) -> str:
    return reader.choice(3, "key type", {KEY_TYPE_ZPK, KEY_TYPE_TPK}, "28")


def _fw(commands: HostCommands, reader: FieldReader) -> CommandResult:
    key_type = _pin_key_type(reader)
    key = commands.clear_key(reader.key("PIN key", 16), key_type, "10")
    pvk = _pvk(commands, reader, "11")
    block = reader.hex(16, "PIN block")
    block_format = _pin_format(reader)
    account = _account(reader)
    pvki = _pvki(reader)
    reader.finish()
    pin = commands.decode_pin(key, block, block_format, account)
    return _ok(generate_visa_pvv_account(pvk, account, pvki, pin))


def _cu(commands: HostCommands, reader: FieldReader) -> CommandResult:
    key_type = _pin_key_type(reader)
    key = commands.clear_key(reader.key("PIN key", 16), key_type, "10")
    pvk = _pvk(commands, reader, "11")
    block = reader.hex(16, "PIN block")
    block_format = _pin_format(reader)
    account = _account(reader)
    pvki = _pvki(reader)
    pvv = reader.digits(4, "PVV")
    new_block = reader.hex(16, "new PIN block")
    reader.finish()
    pin = commands.decode_pin(key, block, block_format, account)
    check = _compare(generate_visa_pvv_account(pvk, account, pvki, pin), pvv)
    if check.error_code != "00":
        return check
    new_pin = commands.decode_pin(key, new_block, block_format, account)
    return _ok(generate_visa_pvv_account(pvk, account, pvki, new_pin))


# --- card verification values ------------------------------------------------------------


def _card_fields(reader: FieldReader) -> tuple[str, str, str]:
    pan = reader.until(b";", "PAN", 19)
    if not pan.isdigit() or not pan:
        raise CommandError("15", "PAN must be 1..19 digits")
    return pan, reader.digits(4, "expiry"), reader.digits(3, "service code")


def _cvk(commands: HostCommands, reader: FieldReader) -> bytes:
    cvk = commands.clear_key(reader.key("CVK", 32), KEY_TYPE_CVK, "10")
    if len(cvk) != 16:
        raise CommandError("27", "the CVK must be a double-length pair")
    return cvk


def _cw(commands: HostCommands, reader: FieldReader) -> CommandResult:
    cvk = _cvk(commands, reader)
    pan, expiry, service_code = _card_fields(reader)
    reader.finish()
    return _ok(generate_cvv(cvk, pan, expiry, service_code))


def _cy(commands: HostCommands, reader: FieldReader) -> CommandResult:
    cvk = _cvk(commands, reader)
    cvv = reader.digits(3, "CVV")
    pan, expiry, service_code = _card_fields(reader)
    reader.finish()
    return _compare(generate_cvv(cvk, pan, expiry, service_code), cvv)


# --- MACs --------------------------------------------------------------------------------


def _x9_mac(key: bytes, data: bytes) -> str:
    """MA/MC: X9.9 (single-length TAK) or X9.19 (double), zero padding, 8 hex."""
    if len(key) == 8:
        return generate_mac_iso9797_1_alg_1(key, data, 1).hex().upper()[:8]
    return generate_mac_iso9797_1_alg_3(key[:16], data, 1).hex().upper()[:8]


def _ma(commands: HostCommands, reader: FieldReader) -> CommandResult:
    tak = commands.clear_key(reader.key("TAK", 16), KEY_TYPE_TAK, "10")
    return _ok(_x9_mac(tak, reader.rest()))


def _mc(commands: HostCommands, reader: FieldReader) -> CommandResult:
    tak = commands.clear_key(reader.key("TAK", 16), KEY_TYPE_TAK, "10")
    mac = reader.hex(8, "MAC")
    return _compare(_x9_mac(tak, reader.rest()), mac)


@dataclass(frozen=True)
class _MacRequest:
    mac_hex_length: int
    algorithm: str
    padding: int
    key: bytes
    message: bytes


def _message(reader: FieldReader, input_format: str) -> bytes:
    length = int(reader.hex(4, "message length"), 16)
    if reader.remaining() < length:
        raise CommandError("80", f"message length {length} exceeds the {reader.remaining()} bytes")
    raw = reader.binary(length, "message")
    if input_format != "1":
        return raw
    try:
        return bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise CommandError("15", "hex-encoded message is not even-length hexadecimal") from None


def _mac_request(commands: HostCommands, reader: FieldReader) -> _MacRequest:
    reader.choice(1, "mode flag", {"0"})
    input_format = reader.choice(1, "input format", {"0", "1", "2"})
    mac_size = reader.choice(1, "MAC size", {"0", "1"})
    algorithm = reader.choice(1, "MAC algorithm", {"1", "3"})
    padding = int(reader.choice(1, "padding method", {"1", "2"}))
    key_type = reader.choice(3, "key type", {KEY_TYPE_TAK, KEY_TYPE_ZAK}, "28")
    key = commands.clear_key(reader.key("MAC key", 16), key_type, "10")
    if algorithm == "3" and len(key) != 16:
        raise CommandError("27", "ISO 9797-1 algorithm 3 needs a double-length key")
    message = _message(reader, input_format)
    return _MacRequest(8 if mac_size == "0" else 16, algorithm, padding, key, message)


def _mac_of(request: _MacRequest) -> str:
    if request.algorithm == "1":
        mac = generate_mac_iso9797_1_alg_1(request.key, request.message, request.padding)
    else:
        mac = generate_mac_iso9797_1_alg_3(request.key, request.message, request.padding)
    return mac.hex().upper()[: request.mac_hex_length]


def _m6(commands: HostCommands, reader: FieldReader) -> CommandResult:
    request = _mac_request(commands, reader)
    reader.finish()
    return _ok(_mac_of(request))


def _m8(commands: HostCommands, reader: FieldReader) -> CommandResult:
    request = _mac_request(commands, reader)
    mac = reader.hex(request.mac_hex_length, "MAC")
    reader.finish()
    return _compare(_mac_of(request), mac)


_DUKPT_MAC_VARIANTS = {"0": TdesVariant.MAC_REQUEST, "1": TdesVariant.MAC_RESPONSE}


def _gw(commands: HostCommands, reader: FieldReader) -> CommandResult:
    mode = reader.choice(1, "MAC mode", {"0", "1"})
    variant = _DUKPT_MAC_VARIANTS[reader.choice(1, "MAC direction", {"0", "1"})]
    mac_hex_length = 8 if reader.choice(1, "MAC size", {"0", "1"}) == "0" else 16
    bdk = reader.key("BDK", 32)
    reader.hex(3, "KSN descriptor")
    ksn = reader.hex(20, "KSN")
    received = reader.hex(mac_hex_length, "MAC") if mode == "1" else ""
    message = _message(reader, "0")
    reader.finish()
    mac_key = derive_tdes_working_key(commands.dukpt_key(bdk, ksn), variant)
    mac = generate_mac_iso9797_1_alg_3(mac_key, message, 1).hex().upper()[:mac_hex_length]
    if mode == "0":
        return _ok(mac)
    return _compare(mac, received)


COMMANDS: dict[str, Handler] = {
    "NC": _nc,
    "NO": _no,
    "B2": _b2,
    "BU": _bu,
    "A0": _a0,
    "A6": _a6,
    "A8": _a8,
    "FA": _fa,
    "GC": _gc,
    "IA": _ia,
    "CA": _ca,
    "CC": _cc,
    "CI": _ci,
    "G0": _g0,
    "JE": _je,
    "JG": _jg,
    "JC": _jc,
    "DA": _da,
    "EA": _ea,
    "DC": _dc,
    "EC": _ec,
    "CM": _cm,
    "DE": _de,
    "DG": _dg,
    "FW": _fw,
    "CU": _cu,
    "CW": _cw,
    "CY": _cy,
    "MA": _ma,
    "MC": _mc,
    "M6": _m6,
    "M8": _m8,
    "GW": _gw,
}
"""The command table: command code -> handler (request fields -> result)."""
