"""The in-process HSM facade the switch calls.

Keys cross this boundary only as LMK-encrypted strings (``"U" + 32 hex`` etc.); clear keys
exist only inside `hsm_sim`. Business outcomes (a wrong PIN, an unreadable PIN block, a bad
MAC) are return values; malformed keys or key types are programming or configuration errors
and raise `KeyFormatError`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsm_sim.cvv import generate_cvv
from hsm_sim.des import adjust_key_parity, decrypt_tdes_ecb, encrypt_tdes_ecb, kcv_tdes
from hsm_sim.dukpt import TdesVariant, derive_tdes_working_key, derive_transaction_key
from hsm_sim.keys import KeyFormatError, Lmk, decrypt_key_under_lmk, encrypt_key_under_lmk
from hsm_sim.mac import generate_mac_iso9797_1_alg_3
from hsm_sim.pin import generate_visa_pvv, verify_visa_pvv
from hsm_sim.pinblock import PinBlockError, decode_pinblock_iso_0

__all__ = ["Hsm", "MacDirection", "PinCheck", "WorkingKey"]

KEY_TYPE_TPK = "002"
KEY_TYPE_PVK = "002"
KEY_TYPE_TMK = "002"
KEY_TYPE_TAK = "003"
KEY_TYPE_BDK = "009"
KEY_TYPE_CVK = "402"
WORKING_KEY_TYPES = (KEY_TYPE_TPK, KEY_TYPE_TAK)

# HKDF labels: changing one changes every stored hash / ciphertext, so they carry a version.
PAN_HASH_LABEL = b"honar-switch/hsm_sim/pan-hash/v1"
PAN_ENCRYPTION_LABEL = b"honar-switch/hsm_sim/pan-encryption/v1"
GCM_NONCE_LENGTH = 12
GCM_TAG_LENGTH = 16


CLEAR_KEY_CACHE_MAX = 10_000  # keys under the LMK whose clear form is kept in memory


class PinCheck(enum.Enum):
    """Outcome of a PIN verification."""

    OK = "ok"
    MISMATCH = "mismatch"
    INVALID_BLOCK = "invalid_block"


class MacDirection(enum.Enum):
    """Which TDES DUKPT MAC variant: the terminal's request or the host's response."""

    REQUEST = "request"
    RESPONSE = "response"


_MAC_VARIANTS = {
    MacDirection.REQUEST: TdesVariant.MAC_REQUEST,
    MacDirection.RESPONSE: TdesVariant.MAC_RESPONSE,
}


@dataclass(frozen=True)
class WorkingKey:
    """A new working key: under the LMK (to store), under the TMK (to send), and its KCV."""

    under_lmk: str
    under_tmk: str
    kcv: str


def _derive_key(lmk: Lmk, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(lmk.material())


def _check_pan(pan: str) -> None:
    if not pan.isascii() or not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12..19 decimal digits")


class Hsm:
    """Simulated payShield operations, called in process by the switch.

    >>> hsm = Hsm(lmk=Lmk.test())
    >>> tak = hsm.import_clear_key("0123456789ABCDEFFEDCBA9876543210", "003")
    >>> hsm.verify_mac(tak, b"message", hsm.generate_mac(tak, b"message"))
    True
    """

    def __init__(
        self, *, lmk: Lmk, random_bytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> None:
        self._lmk = lmk
        self._random_bytes = random_bytes
        self._pan_hash_key = _derive_key(lmk, PAN_HASH_LABEL)
        self._pan_hash_mac = hmac.new(self._pan_hash_key, digestmod=hashlib.sha256)
        self._pan_aead = AESGCM(_derive_key(lmk, PAN_ENCRYPTION_LABEL))
        self._clear_keys: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"Hsm(lmk={self._lmk!r})"

    def _clear(self, key_lmk: str, key_type: str) -> bytes:
        # Working keys are used for every request: keep their clear form (inside the HSM only)
        # instead of decrypting them under the LMK each time. Bounded: cleared when full.
        cache_key = (key_lmk, key_type)
        clear = self._clear_keys.get(cache_key)
        if clear is None:
            clear = decrypt_key_under_lmk(self._lmk, key_lmk, key_type)
            if len(self._clear_keys) >= CLEAR_KEY_CACHE_MAX:
                self._clear_keys.clear()
            self._clear_keys[cache_key] = clear
        return clear

    def import_clear_key(self, clear_hex: str, key_type: str, scheme: str = "U") -> str:
        """Encrypt a clear key under the LMK (demo data loading only); odd parity is forced."""
        try:
            clear = bytes.fromhex(clear_hex)
        except ValueError:
            raise KeyFormatError("clear key is not hexadecimal") from None
        return encrypt_key_under_lmk(self._lmk, clear, key_type, scheme)

    def key_check_value(self, key_lmk: str, key_type: str) -> str:
        """KCV of a key under the LMK: 6 hex characters."""
        return kcv_tdes(self._clear(key_lmk, key_type)).hex().upper()

    def generate_mac(self, tak_lmk: str, data: bytes) -> bytes:
        """ISO 9797-1 algorithm 3 (X9.19) MAC, padding method 1, under a TAK; 8 bytes."""
        return generate_mac_iso9797_1_alg_3(self._clear(tak_lmk, KEY_TYPE_TAK), data, 1)

    def verify_mac(self, tak_lmk: str, data: bytes, mac: bytes) -> bool:
        """True when ``mac`` (8 bytes, or a truncated leftmost part) matches; constant time."""
        return _mac_matches(self.generate_mac(tak_lmk, data), mac)

    def generate_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, direction: MacDirection
    ) -> bytes:
        """X9.19 MAC under the request or response MAC variant of the TDES DUKPT key; 8 bytes."""
        transaction_key = derive_transaction_key(self._clear(bdk_lmk, KEY_TYPE_BDK), ksn)
        mac_key = derive_tdes_working_key(transaction_key, _MAC_VARIANTS[direction])
        return generate_mac_iso9797_1_alg_3(mac_key, data, 1)

    def verify_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, mac: bytes, direction: MacDirection
    ) -> bool:
        """True when the DUKPT MAC matches (constant-time compare of the given length)."""
        return _mac_matches(self.generate_mac_dukpt(bdk_lmk, ksn, data, direction), mac)

    def _verify_clear_block(
        self, pin_key: bytes, pvk_lmk: str, pin_block: bytes, pan: str, pvki: int, pvv: str
    ) -> PinCheck:
        if len(pin_block) != 8:
            return PinCheck.INVALID_BLOCK
        try:
            pin = decode_pinblock_iso_0(decrypt_tdes_ecb(pin_key, pin_block), pan)
        except PinBlockError:
            return PinCheck.INVALID_BLOCK
        pvk = self._clear(pvk_lmk, KEY_TYPE_PVK)
        if verify_visa_pvv(pvk, pan, pvki, pin, pvv):
            return PinCheck.OK
        return PinCheck.MISMATCH

    def verify_pin_pvv(
        self, tpk_lmk: str, pvk_lmk: str, pin_block: bytes, pan: str, pvki: int, pvv: str
    ) -> PinCheck:
        """Verify an ISO format 0 PIN block under a TPK against the card's Visa PVV.

        INVALID_BLOCK when the block does not decrypt to a valid format 0 block for the PAN.
        """
        tpk = self._clear(tpk_lmk, KEY_TYPE_TPK)
        return self._verify_clear_block(tpk, pvk_lmk, pin_block, pan, pvki, pvv)

    def verify_pin_pvv_dukpt(
        self,
        bdk_lmk: str,
        ksn: bytes,
        pvk_lmk: str,
        pin_block: bytes,
        pan: str,
        pvki: int,
        pvv: str,
    ) -> PinCheck:
        """Verify a format 0 PIN block under the TDES DUKPT PIN key against the Visa PVV."""
        transaction_key = derive_transaction_key(self._clear(bdk_lmk, KEY_TYPE_BDK), ksn)
        pin_key = derive_tdes_working_key(transaction_key, TdesVariant.PIN)
        return self._verify_clear_block(pin_key, pvk_lmk, pin_block, pan, pvki, pvv)

    def generate_pvv(self, pvk_lmk: str, pan: str, pin: str, pvki: int) -> str:
        """Visa PVV for card issuance (4 digits)."""
        return generate_visa_pvv(self._clear(pvk_lmk, KEY_TYPE_PVK), pan, pvki, pin)

    def generate_cvv(self, cvk_lmk: str, pan: str, expiry_yymm: str, service_code: str) -> str:
        """Visa CVV (3 digits); expiry as on the card, YYMM, which is what the CVV input uses.

        CVV2 is service code ``"000"`` and iCVV ``"999"``.
        """
        return generate_cvv(self._clear(cvk_lmk, KEY_TYPE_CVK), pan, expiry_yymm, service_code)

    def generate_working_key(self, tmk_lmk: str, key_type: str) -> WorkingKey:
        """A new random odd-parity double-length TPK (002) or TAK (003) for a terminal."""
        if key_type not in WORKING_KEY_TYPES:
            raise KeyFormatError(f"working keys are TPK 002 or TAK 003, not {key_type!r}")
        tmk = self._clear(tmk_lmk, KEY_TYPE_TMK)
        while True:
            key = adjust_key_parity(self._random_bytes(16))
            # Equal halves would make the key single DES in disguise.
            if key[:8] != key[8:]:
                break
        return WorkingKey(
            under_lmk=encrypt_key_under_lmk(self._lmk, key, key_type, "U"),
            under_tmk=encrypt_tdes_ecb(tmk, key).hex().upper(),
            kcv=kcv_tdes(key).hex().upper(),
        )

    def pan_hash(self, pan: str) -> str:
        """Keyed PAN hash for lookups: HMAC-SHA256 under an LMK-derived key, 64 lowercase hex."""
        _check_pan(pan)
        mac = self._pan_hash_mac.copy()  # copying the keyed state skips the key schedule
        mac.update(pan.encode("ascii"))
        return mac.hexdigest()

    def encrypt_pan(self, pan: str) -> bytes:
        """AES-256-GCM encryption of the PAN: 12-byte random nonce || ciphertext || tag."""
        _check_pan(pan)
        nonce = self._random_bytes(GCM_NONCE_LENGTH)
        return nonce + self._pan_aead.encrypt(nonce, pan.encode("ascii"), None)

    def decrypt_pan(self, blob: bytes) -> str:
        """Inverse of `encrypt_pan`; raises ValueError if the blob was altered or is foreign."""
        if len(blob) < GCM_NONCE_LENGTH + GCM_TAG_LENGTH:
            raise ValueError(f"encrypted PAN of {len(blob)} bytes is too short")
        nonce, ciphertext = blob[:GCM_NONCE_LENGTH], blob[GCM_NONCE_LENGTH:]
        try:
            return self._pan_aead.decrypt(nonce, ciphertext, None).decode("ascii")
        except InvalidTag:
            raise ValueError("encrypted PAN does not authenticate under this LMK") from None


def _mac_matches(expected: bytes, received: bytes) -> bool:
    # Accept the leftmost 4..8 bytes, as ISO 8583 fields and Thales MAC sizes do.
    if not 4 <= len(received) <= len(expected):
        return False
    return hmac.compare_digest(expected[: len(received)], received)
