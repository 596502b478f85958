"""ISO 9564-1 PIN blocks, formats 0, 1, 2, 3 and 4.

Formats 0-3 are 8-byte blocks (enciphered with TDES), format 4 is a 16-byte block enciphered
with AES. Clear-block functions (`encode_*` / `decode_*`) never touch a key; `encipher_*` /
`decipher_*` add the cipher. Decoding checks every nibble, and an invalid block raises
`PinBlockError` saying what is wrong, so the caller can answer "invalid PIN block" (Thales 20).

Random fill (formats 1, 3, 4) comes from the ``fill`` parameter: ``None`` uses `secrets`, a
callable is asked for bytes, and a bytes value is used as the fill material itself (for
known-answer tests).

>>> encode_pinblock_iso_0("1234", "5555555551234567").hex().upper()
'041261AAAAEDCBA9'
>>> decode_pinblock_iso_0(bytes.fromhex("041261AAAAEDCBA9"), "5555555551234567")
'1234'
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from hsm_sim.des import decrypt_aes_ecb, decrypt_tdes_ecb, encrypt_aes_ecb, encrypt_tdes_ecb, xor

__all__ = [
    "Fill",
    "PinBlockError",
    "account_number_iso_0",
    "decipher_pinblock_iso_0",
    "decipher_pinblock_iso_1",
    "decipher_pinblock_iso_3",
    "decipher_pinblock_iso_4",
    "decode_pan_field_iso_4",
    "decode_pin_field_iso_4",
    "decode_pinblock_ibm_3624",
    "decode_pinblock_iso_0",
    "decode_pinblock_iso_0_account",
    "decode_pinblock_iso_1",
    "decode_pinblock_iso_2",
    "decode_pinblock_iso_3",
    "encipher_pinblock_iso_0",
    "encipher_pinblock_iso_1",
    "encipher_pinblock_iso_3",
    "encipher_pinblock_iso_4",
    "encode_pan_field_iso_4",
    "encode_pin_field_iso_4",
    "encode_pinblock_ibm_3624",
    "encode_pinblock_iso_0",
    "encode_pinblock_iso_0_account",
    "encode_pinblock_iso_1",
    "encode_pinblock_iso_2",
    "encode_pinblock_iso_3",
]

Fill = bytes | Callable[[int], bytes] | None
"""Source of random fill: exact bytes, a ``random_bytes(n)`` callable, or None for `secrets`."""

PIN_LENGTH_MIN = 4
PIN_LENGTH_MAX = 12
PAN_LENGTH_MAX_ISO_4 = 19
FILL_DRAWS_MAX = 16
ACCOUNT_DIGITS = 12


class PinBlockError(ValueError):
    """A PIN block, PIN or PAN that does not satisfy ISO 9564-1; the message says why."""


def _check_pin(pin: str) -> None:
    if not pin.isascii() or not pin.isdigit():
        raise PinBlockError("PIN must contain decimal digits only")
    if not PIN_LENGTH_MIN <= len(pin) <= PIN_LENGTH_MAX:
        raise PinBlockError(
            f"PIN length {len(pin)} is outside {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX} digits"
        )


def _check_digits(value: str, name: str) -> None:
    if not value.isascii() or not value.isdigit():
        raise PinBlockError(f"{name} must contain decimal digits only")


def account_number_iso_0(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit (ISO 9564-1 format 0/3 account).

    >>> account_number_iso_0("4000001234562000")
    '000123456200'
    """
    _check_digits(pan, "PAN")
    if len(pan) < ACCOUNT_DIGITS + 1:
        # The standard asks for at least 12 digits besides the check digit; shorter PANs are
        # left-padded with zeros as every HSM does, so that 13-digit Visa PANs still work.
        if len(pan) < 2:
            raise PinBlockError(f"PAN of {len(pan)} digits is too short")
        return pan[:-1].rjust(ACCOUNT_DIGITS, "0")
    return pan[-ACCOUNT_DIGITS - 1 : -1]


def _check_account(account: str) -> None:
    _check_digits(account, "account number")
    if len(account) != ACCOUNT_DIGITS:
        raise PinBlockError(f"account number must be 12 digits, got {len(account)}")


def _random_bytes(fill: Fill, count: int) -> bytes:
    if fill is None:
        return secrets.token_bytes(count)
    if callable(fill):
        data = fill(count)
        if len(data) != count:
            raise ValueError(f"random source returned {len(data)} bytes, asked for {count}")
        return data
    return bytes(fill)


def _fill_nibbles(fill: Fill, count: int, *, low: int) -> str:
    """``count`` hex nibbles in ``low``..15 (0 for format 1, 10 for format 3)."""
    if isinstance(fill, bytes | bytearray):
        nibbles = bytes(fill).hex().upper()[:count]
        if len(nibbles) < count:
            raise ValueError(f"fill of {len(fill)} bytes is shorter than {count} nibbles")
        if any(int(n, 16) < low for n in nibbles):
            raise ValueError(f"fill nibbles must be {low:X}..F, got {nibbles}")
        return nibbles
    span = 16 - low
    out: list[str] = []
    for _draw in range(FILL_DRAWS_MAX):
        for byte in _random_bytes(fill, count):
            # Rejection sampling keeps every allowed nibble equally likely.
            if byte < 256 - 256 % span and len(out) < count:
                out.append(f"{low + byte % span:X}")
        if len(out) == count:
            return "".join(out)
    # Only a broken or adversarial source gets here; secrets needs one draw almost always.
    raise ValueError(f"random source gave no usable fill in {FILL_DRAWS_MAX} draws")


def _pin_field(control: int, pin: str, fill_nibbles: str) -> bytes:
    return bytes.fromhex(f"{control:X}{len(pin):X}{pin}{fill_nibbles}")


def _pan_field_iso_0(account: str) -> bytes:
    return bytes.fromhex("0000" + account)


def _decode_pin_field(field: bytes, control: int, fill: str | None) -> str:
    """Check control nibble, length, PIN digits and fill; ``fill`` is the allowed fill set."""
    nibbles = field.hex().upper()
    if len(field) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(field)}")
    if nibbles[0] != f"{control:X}":
        raise PinBlockError(f"control field is {nibbles[0]}, expected {control:X}")
    pin_length = int(nibbles[1], 16)
    if not PIN_LENGTH_MIN <= pin_length <= PIN_LENGTH_MAX:
        raise PinBlockError(
            f"PIN length {pin_length} is outside {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX}"
        )
    pin = nibbles[2 : 2 + pin_length]
    if not pin.isdigit():
        raise PinBlockError(f"PIN digits contain a non-decimal nibble: {pin!r}")
    padding = nibbles[2 + pin_length :]
    if fill is not None and any(n not in fill for n in padding):
        raise PinBlockError(f"fill {padding!r} contains nibbles outside {fill!r}")
    return pin


def encode_pinblock_iso_0_account(pin: str, account: str) -> bytes:
    """Clear ISO format 0 block from a PIN and a 12-digit account number (as Thales passes it).

    >>> encode_pinblock_iso_0_account("1234", "550000025321").hex().upper()
    '041261FFFFFDACDE'
    """
    _check_pin(pin)
    _check_account(account)
    pin_field = _pin_field(0, pin, "F" * (14 - len(pin)))
    return xor(pin_field, _pan_field_iso_0(account))


def encode_pinblock_iso_0(pin: str, pan: str) -> bytes:
    """Clear ISO 9564-1 format 0 (ANSI X9.8) PIN block.

    >>> encode_pinblock_iso_0("1234", "4012345678909").hex().upper()
    '041274EDCBA9876F'
    """
    return encode_pinblock_iso_0_account(pin, account_number_iso_0(pan))


def decode_pinblock_iso_0_account(block: bytes, account: str) -> str:
    """PIN from a clear format 0 block given the 12-digit account number."""
    _check_account(account)
    if len(block) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(block)}")
    return _decode_pin_field(xor(block, _pan_field_iso_0(account)), 0, "F")


def decode_pinblock_iso_0(block: bytes, pan: str) -> str:
    """PIN from a clear ISO format 0 block; raises `PinBlockError` if the block is invalid."""
    return decode_pinblock_iso_0_account(block, account_number_iso_0(pan))


def encode_pinblock_iso_1(pin: str, fill: Fill = None) -> bytes:
    """Clear ISO format 1 block: control 1, PIN, random (or transaction-unique) hex fill."""
    _check_pin(pin)
    return _pin_field(1, pin, _fill_nibbles(fill, 14 - len(pin), low=0))


def decode_pinblock_iso_1(block: bytes) -> str:
    """PIN from a clear ISO format 1 block (any fill is accepted)."""
    return _decode_pin_field(block, 1, None)


def encode_pinblock_iso_2(pin: str) -> bytes:
    """Clear ISO format 2 block (ICC offline PIN): control 2, PIN, F fill.

    >>> encode_pinblock_iso_2("123456789").hex().upper()
    '29123456789FFFFF'
    """
    _check_pin(pin)
    return _pin_field(2, pin, "F" * (14 - len(pin)))


def decode_pinblock_iso_2(block: bytes) -> str:
    """PIN from a clear ISO format 2 block."""
    return _decode_pin_field(block, 2, "F")


def encode_pinblock_iso_3(pin: str, pan: str, fill: Fill = None) -> bytes:
    """Clear ISO format 3 block: like format 0 with random fill nibbles A-F."""
    _check_pin(pin)
    pin_field = _pin_field(3, pin, _fill_nibbles(fill, 14 - len(pin), low=10))
    return xor(pin_field, _pan_field_iso_0(account_number_iso_0(pan)))


def decode_pinblock_iso_3(block: bytes, pan: str) -> str:
    """PIN from a clear ISO format 3 block.

    >>> decode_pinblock_iso_3(bytes.fromhex("341261AAAAEDCBA9"), "5555555551234567")
    '1234'
    """
    if len(block) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(block)}")
    pan_field = _pan_field_iso_0(account_number_iso_0(pan))
    return _decode_pin_field(xor(block, pan_field), 3, "ABCDEF")


def encipher_pinblock_iso_0(key: bytes, pin: str, pan: str) -> bytes:
    """Format 0 block TDES-encrypted under ``key`` (a TPK, ZPK or DUKPT PIN key)."""
    return encrypt_tdes_ecb(key, encode_pinblock_iso_0(pin, pan))


def decipher_pinblock_iso_0(key: bytes, block: bytes, pan: str) -> str:
    """PIN from a TDES-encrypted format 0 block."""
    if len(block) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(block)}")
    return decode_pinblock_iso_0(decrypt_tdes_ecb(key, block), pan)


def encipher_pinblock_iso_1(key: bytes, pin: str, fill: Fill = None) -> bytes:
    """Format 1 block TDES-encrypted under ``key``."""
    return encrypt_tdes_ecb(key, encode_pinblock_iso_1(pin, fill))


def decipher_pinblock_iso_1(key: bytes, block: bytes) -> str:
    """PIN from a TDES-encrypted format 1 block."""
    if len(block) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(block)}")
    return decode_pinblock_iso_1(decrypt_tdes_ecb(key, block))


def encipher_pinblock_iso_3(key: bytes, pin: str, pan: str, fill: Fill = None) -> bytes:
    """Format 3 block TDES-encrypted under ``key``."""
    return encrypt_tdes_ecb(key, encode_pinblock_iso_3(pin, pan, fill))


def decipher_pinblock_iso_3(key: bytes, block: bytes, pan: str) -> str:
    """PIN from a TDES-encrypted format 3 block."""
    if len(block) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(block)}")
    return decode_pinblock_iso_3(decrypt_tdes_ecb(key, block), pan)


def encode_pinblock_ibm_3624(pin: str) -> bytes:
    """IBM 3624 (Diebold, Thales format code 03) clear block: the PIN, then F padding.

    >>> encode_pinblock_ibm_3624("1234").hex().upper()
    '1234FFFFFFFFFFFF'
    """
    _check_pin(pin)
    return bytes.fromhex(pin.ljust(16, "F"))


def decode_pinblock_ibm_3624(block: bytes) -> str:
    """PIN from a clear IBM 3624 block: digits up to the first F, all the rest F."""
    if len(block) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(block)}")
    nibbles = block.hex().upper()
    pin = nibbles.split("F", 1)[0]
    if not pin.isdigit() or not PIN_LENGTH_MIN <= len(pin) <= PIN_LENGTH_MAX:
        raise PinBlockError(f"IBM 3624 block must start with 4..12 PIN digits, got {pin!r}")
    if nibbles[len(pin) :] != "F" * (16 - len(pin)):
        raise PinBlockError("IBM 3624 block padding must be all F after the PIN")
    return pin


def encode_pin_field_iso_4(pin: str, fill: Fill = None) -> bytes:
    """Format 4 plain-text PIN field: 4, length, PIN, A fill to 16 nibbles, 8 random bytes.

    >>> encode_pin_field_iso_4("1234", bytes.fromhex("2F69ADDE2E9E7ACE")).hex().upper()
    '441234AAAAAAAAAA2F69ADDE2E9E7ACE'
    """
    _check_pin(pin)
    random_part = _random_bytes(fill, 8)
    if len(random_part) != 8:
        raise ValueError(f"format 4 fill must be 8 bytes, got {len(random_part)}")
    return _pin_field(4, pin, "A" * (14 - len(pin))) + random_part


def decode_pin_field_iso_4(field: bytes) -> str:
    """PIN from a format 4 plain-text PIN field (the random half is not checked)."""
    if len(field) != 16:
        raise PinBlockError(f"format 4 PIN field must be 16 bytes, got {len(field)}")
    return _decode_pin_field(field[:8], 4, "A")


def encode_pan_field_iso_4(pan: str) -> bytes:
    """Format 4 plain-text PAN field: M (PAN length - 12), PAN (12+ digits), zero padding.

    >>> encode_pan_field_iso_4("4111111111111111").hex().upper()
    '44111111111111111000000000000000'
    """
    _check_digits(pan, "PAN")
    if not 1 <= len(pan) <= PAN_LENGTH_MAX_ISO_4:
        raise PinBlockError(f"PAN length {len(pan)} is outside 1..{PAN_LENGTH_MAX_ISO_4}")
    if len(pan) < ACCOUNT_DIGITS:
        return bytes.fromhex(("0" + pan.rjust(ACCOUNT_DIGITS, "0")).ljust(32, "0"))
    return bytes.fromhex((f"{len(pan) - ACCOUNT_DIGITS:X}" + pan).ljust(32, "0"))


def decode_pan_field_iso_4(field: bytes) -> str:
    """PAN from a format 4 plain-text PAN field."""
    if len(field) != 16:
        raise PinBlockError(f"format 4 PAN field must be 16 bytes, got {len(field)}")
    nibbles = field.hex().upper()
    length = ACCOUNT_DIGITS + int(nibbles[0], 16)
    pan = nibbles[1 : 1 + length]
    if length > PAN_LENGTH_MAX_ISO_4 or not pan.isdigit():
        raise PinBlockError(f"format 4 PAN field is invalid: {nibbles}")
    return pan


def encipher_pinblock_iso_4(key: bytes, pin: str, pan: str, fill: Fill = None) -> bytes:
    """ISO format 4 block: AES(K, AES(K, PIN field) XOR PAN field).

    >>> encipher_pinblock_iso_4(bytes.fromhex("00112233445566778899AABBCCDDEEFF"), "1234",
    ...     "1234567890123456789", b"\\xff" * 8).hex().upper()
    '28B41FDDD29B743E93124BD8E32D921E'
    """
    intermediate = encrypt_aes_ecb(key, encode_pin_field_iso_4(pin, fill))
    return encrypt_aes_ecb(key, xor(intermediate, encode_pan_field_iso_4(pan)))


def decipher_pinblock_iso_4(key: bytes, block: bytes, pan: str) -> str:
    """PIN from an ISO format 4 block enciphered under the AES ``key``."""
    if len(block) != 16:
        raise PinBlockError(f"format 4 PIN block must be 16 bytes, got {len(block)}")
    intermediate = xor(decrypt_aes_ecb(key, block), encode_pan_field_iso_4(pan))
    return decode_pin_field_iso_4(decrypt_aes_ecb(key, intermediate))
