"""Visa card verification values: CVV (magnetic stripe), CVV2 (service code 000), iCVV (999).

>>> cvk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
>>> generate_cvv(cvk, "4999988887777", "9105", "111")
'649'
"""

from __future__ import annotations

import hmac

from hsm_sim.des import encrypt_tdes_ecb, xor
from hsm_sim.pin import decimalise_visa

__all__ = ["generate_cvv", "generate_cvv2", "generate_icvv", "verify_cvv"]

CVV_LENGTH = 3
SERVICE_CODE_CVV2 = "000"
SERVICE_CODE_ICVV = "999"


def generate_cvv(cvk: bytes, pan: str, expiry: str, service_code: str) -> str:
    """Visa CVV over PAN, expiry (as the issuer encodes it, usually YYMM) and service code.

    The 32-digit input (zero-padded) is split in two blocks: DES under the left CVK half, XOR
    the second block, TDES under the CVK pair, then Visa decimalisation of the result.
    """
    for value, name in ((pan, "PAN"), (expiry, "expiry"), (service_code, "service code")):
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"{name} must contain decimal digits only, got {value!r}")
    if len(expiry) != 4 or len(service_code) != 3:
        raise ValueError("expiry must be 4 digits and service code 3 digits")
    if not 1 <= len(pan) <= 19:
        raise ValueError(f"PAN length {len(pan)} is outside 1..19")
    if len(cvk) not in (16, 24):
        raise ValueError(f"CVK must be a double-length key, got {len(cvk)} bytes")
    digits = (pan + expiry + service_code).ljust(32, "0")
    first, second = bytes.fromhex(digits[:16]), bytes.fromhex(digits[16:])
    intermediate = xor(encrypt_tdes_ecb(cvk[:8], first), second)
    return decimalise_visa(encrypt_tdes_ecb(cvk[:16], intermediate), CVV_LENGTH)


def generate_cvv2(cvk: bytes, pan: str, expiry: str) -> str:
    """CVV2 (printed on the card): CVV with service code 000."""
    return generate_cvv(cvk, pan, expiry, SERVICE_CODE_CVV2)


def generate_icvv(cvk: bytes, pan: str, expiry: str) -> str:
    """iCVV (chip track-2 equivalent data): CVV with service code 999."""
    return generate_cvv(cvk, pan, expiry, SERVICE_CODE_ICVV)


def verify_cvv(cvk: bytes, pan: str, expiry: str, service_code: str, cvv: str) -> bool:
    """True when ``cvv`` matches (constant-time comparison)."""
    expected = generate_cvv(cvk, pan, expiry, service_code)
    return hmac.compare_digest(expected.encode("ascii"), cvv.encode("ascii"))
