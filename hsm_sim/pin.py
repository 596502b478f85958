"""PIN verification values: Visa PVV and IBM 3624 natural PIN / offset.

>>> pvk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
>>> generate_visa_pvv(pvk, "1122334455667718", 1, "0570")
'3144'
>>> generate_ibm3624_offset(pvk, "1122334455667788", "1234567890123456", "5635")
'1111'
"""

from __future__ import annotations

import hmac

from hsm_sim.des import encrypt_tdes_ecb

__all__ = [
    "decimalise_visa",
    "generate_ibm3624_natural_pin",
    "generate_ibm3624_offset",
    "generate_ibm3624_pin_from_offset",
    "generate_visa_pvv",
    "generate_visa_pvv_account",
    "verify_visa_pvv",
]

PVV_LENGTH = 4
PIN_LENGTH_MIN = 4
PIN_LENGTH_MAX = 12
VALIDATION_DATA_LENGTH = 16
HEX_DIGITS = "0123456789ABCDEF"


_DECIMAL_NIBBLES = str.maketrans("", "", "ABCDEF")  # keep 0-9, in order
_LETTER_NIBBLES = str.maketrans("ABCDEF", "012345", "0123456789")  # A-F minus 10, in order


def decimalise_visa(block: bytes, length: int) -> str:
    """Visa decimalisation: decimal nibbles left to right, then A-F minus 10 if still short.

    Shared by PVV and CVV.
    """
    nibbles = block.hex().upper()
    return (nibbles.translate(_DECIMAL_NIBBLES) + nibbles.translate(_LETTER_NIBBLES))[:length]


def _check_decimal(value: str, name: str) -> None:
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{name} must contain decimal digits only, got {value!r}")


def generate_visa_pvv(pvk: bytes, pan: str, pvki: int, pin: str) -> str:
    """Visa PIN verification value (4 digits).

    Transformed security parameter = 11 rightmost PAN digits excluding the check digit, the PVK
    index (0-9) and the 4 leftmost PIN digits; it is TDES-encrypted under the PVK pair and
    decimalised the Visa way.
    """
    _check_decimal(pan, "PAN")
    _check_decimal(pin, "PIN")
    if len(pan) < 12:
        raise ValueError(f"PAN must have at least 12 digits, got {len(pan)}")
    if not 0 <= pvki <= 9:
        raise ValueError(f"PVKI must be 0..9, got {pvki}")
    if not PIN_LENGTH_MIN <= len(pin) <= PIN_LENGTH_MAX:
        raise ValueError(f"PIN length {len(pin)} is outside {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX}")
    tsp = pan[-12:-1] + str(pvki) + pin[:4]
    return decimalise_visa(encrypt_tdes_ecb(pvk, bytes.fromhex(tsp)), PVV_LENGTH)


def generate_visa_pvv_account(pvk: bytes, account: str, pvki: int, pin: str) -> str:
    """Visa PVV from the 12-digit account field of a Thales command (PAN without check digit).

    The account already excludes the check digit, so its 11 rightmost digits enter the TSP.
    """
    if len(account) != 12:
        raise ValueError(f"account number must be 12 digits, got {len(account)}")
    # Appending any digit as a stand-in check digit lets the PAN rule pick the same 11 digits.
    return generate_visa_pvv(pvk, account + "0", pvki, pin)


def verify_visa_pvv(pvk: bytes, pan: str, pvki: int, pin: str, pvv: str) -> bool:
    """True when ``pvv`` is the PVV of the PIN (compared in constant time)."""
    expected = generate_visa_pvv(pvk, pan, pvki, pin)
    return hmac.compare_digest(expected.encode("ascii"), pvv.encode("ascii"))


def _check_table(decimalisation_table: str) -> None:
    if len(decimalisation_table) != 16 or not decimalisation_table.isdigit():
        raise ValueError("decimalisation table must be 16 decimal digits")


def generate_ibm3624_natural_pin(
    pvk: bytes,
    validation_data: str,
    decimalisation_table: str,
    pin_length: int,
    pad: str = "F",
) -> str:
    """IBM 3624 natural (intermediate) PIN.

    The validation data (hex, up to 16 characters, right-padded with ``pad``) is encrypted
    under the PVK; each hex digit of the result is mapped through the decimalisation table and
    the leftmost ``pin_length`` digits are the natural PIN.
    """
    _check_table(decimalisation_table)
    if len(pad) != 1 or pad.upper() not in HEX_DIGITS:
        raise ValueError(f"pad character must be one hex digit, got {pad!r}")
    if not 1 <= len(validation_data) <= VALIDATION_DATA_LENGTH:
        raise ValueError(f"validation data must be 1..16 hex digits, got {len(validation_data)}")
    if any(c not in HEX_DIGITS for c in validation_data.upper()):
        raise ValueError("validation data must be hexadecimal")
    if not PIN_LENGTH_MIN <= pin_length <= VALIDATION_DATA_LENGTH:
        raise ValueError(f"PIN length {pin_length} is outside {PIN_LENGTH_MIN}..16")
    data = bytes.fromhex(validation_data.ljust(VALIDATION_DATA_LENGTH, pad))
    nibbles = encrypt_tdes_ecb(pvk, data).hex().upper()
    decimal = "".join(decimalisation_table[int(n, 16)] for n in nibbles)
    return decimal[:pin_length]


def generate_ibm3624_offset(
    pvk: bytes,
    validation_data: str,
    decimalisation_table: str,
    pin: str,
    pad: str = "F",
) -> str:
    """IBM 3624 PIN offset: (customer PIN - natural PIN) digit by digit, modulo 10."""
    _check_decimal(pin, "PIN")
    natural = generate_ibm3624_natural_pin(
        pvk, validation_data, decimalisation_table, len(pin), pad
    )
    return "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural, strict=True))


def generate_ibm3624_pin_from_offset(
    pvk: bytes,
    validation_data: str,
    decimalisation_table: str,
    offset: str,
    pad: str = "F",
) -> str:
    """Customer PIN from an IBM 3624 offset: (natural PIN + offset) digit by digit, modulo 10."""
    _check_decimal(offset, "offset")
    natural = generate_ibm3624_natural_pin(
        pvk, validation_data, decimalisation_table, len(offset), pad
    )
    return "".join(str((int(n) + int(o)) % 10) for n, o in zip(natural, offset, strict=True))
