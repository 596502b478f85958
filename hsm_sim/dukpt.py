"""DUKPT key derivation: TDES (ANSI X9.24-1:2009) and AES (ANSI X9.24-3-2017).

TDES DUKPT
    The KSN is 10 bytes; its rightmost 21 bits are the transaction counter. The host derives
    the IPEK from the BDK, then walks the counter's set bits from the most significant down,
    applying the non-reversible key generation for each one. Working keys are the transaction
    key XOR a variant (PIN, MAC request/response, data request/response).

AES DUKPT
    The KSN is 12 bytes: an 8-byte initial key ID and a 32-bit counter. Every key is derived
    by AES-ECB encrypting a 16-byte derivation-data block (NIST SP 800-108 counter mode with
    AES as the PRF) under the parent key.

>>> bdk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
>>> derive_ipek(bdk, bytes.fromhex("FFFF9876543210E00000")).hex().upper()
'6AC292FAA1315B4D858AB3A3D7D5933A'
"""

from __future__ import annotations

import enum

from hsm_sim.des import encrypt_aes_ecb, encrypt_tdes_ecb, xor

__all__ = [
    "AesKeyUsage",
    "DukptAlgorithm",
    "TdesVariant",
    "derive_aes_initial_key",
    "derive_aes_intermediate_key",
    "derive_aes_transaction_key",
    "derive_aes_working_key",
    "derive_ipek",
    "derive_tdes_data_key",
    "derive_tdes_working_key",
    "derive_transaction_key",
    "derive_transaction_key_from_ipek",
]

TDES_KSN_LENGTH = 10
TDES_COUNTER_BITS = 21
TDES_COUNTER_MASK = (1 << TDES_COUNTER_BITS) - 1
# X9.24-1 A.6: the BDK (and each key in the non-reversible process) is XORed with this mask
# to derive the second half.
KEY_MASK = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")


class TdesVariant(enum.Enum):
    """Variant constants that turn a TDES DUKPT transaction key into a working key."""

    PIN = bytes.fromhex("00000000000000FF00000000000000FF")
    MAC_REQUEST = bytes.fromhex("000000000000FF00000000000000FF00")
    MAC_RESPONSE = bytes.fromhex("00000000FF00000000000000FF000000")
    DATA_REQUEST = bytes.fromhex("0000000000FF00000000000000FF0000")
    DATA_RESPONSE = bytes.fromhex("000000FF00000000000000FF00000000")


def _check_tdes_ksn(ksn: bytes) -> None:
    if len(ksn) != TDES_KSN_LENGTH:
        raise ValueError(f"TDES DUKPT KSN must be 10 bytes, got {len(ksn)}")


def _check_double_key(key: bytes, name: str) -> None:
    if len(key) != 16:
        raise ValueError(f"{name} must be a 16-byte double-length key, got {len(key)}")


def derive_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """Initial PIN encryption key (initial key) of the device named by ``ksn``.

    Left half: TDES(BDK, leftmost 8 KSN bytes with the counter cleared); right half: the same
    under BDK XOR C0C0C0C000000000C0C0C0C000000000.
    """
    _check_double_key(bdk, "BDK")
    _check_tdes_ksn(ksn)
    register = (int.from_bytes(ksn, "big") & ~TDES_COUNTER_MASK).to_bytes(10, "big")[:8]
    return encrypt_tdes_ecb(bdk, register) + encrypt_tdes_ecb(xor(bdk, KEY_MASK), register)


def _non_reversible_key(key: bytes, register: bytes) -> bytes:
    """X9.24-1 non-reversible key generation of a 16-byte key from an 8-byte register."""

    def half(k: bytes) -> bytes:
        left, right = k[:8], k[8:]
        return xor(encrypt_tdes_ecb(left, xor(register, right)), right)

    return half(xor(key, KEY_MASK)) + half(key)


def derive_transaction_key_from_ipek(ipek: bytes, ksn: bytes) -> bytes:
    """Current transaction key (before any variant) from the IPEK and the KSN.

    Every set bit of the full 21-bit counter is processed, so counters above 0x1FF (the
    X9.24-1 A.4.3 rollover sequence) derive correctly.
    """
    _check_double_key(ipek, "IPEK")
    _check_tdes_ksn(ksn)
    value = int.from_bytes(ksn[2:], "big")
    counter = value & TDES_COUNTER_MASK
    register = value & ~TDES_COUNTER_MASK
    key = ipek
    for shift in range(TDES_COUNTER_BITS - 1, -1, -1):
        bit = 1 << shift
        if counter & bit:
            register |= bit
            key = _non_reversible_key(key, register.to_bytes(8, "big"))
    return key


def derive_transaction_key(bdk: bytes, ksn: bytes) -> bytes:
    """Current transaction key (before any variant) from the BDK and the KSN.

    >>> bdk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> derive_transaction_key(bdk, bytes.fromhex("FFFF9876543210E00001")).hex().upper()
    '042666B49184CFA368DE9628D0397BC9'
    """
    return derive_transaction_key_from_ipek(derive_ipek(bdk, ksn), ksn)


def derive_tdes_working_key(transaction_key: bytes, variant: TdesVariant) -> bytes:
    """Transaction key XOR a variant: the PIN or MAC key (or the data key before its OWF)."""
    _check_double_key(transaction_key, "transaction key")
    return xor(transaction_key, variant.value)


def derive_tdes_data_key(transaction_key: bytes, variant: TdesVariant) -> bytes:
    """Data encryption key of X9.24-1:2009: the data variant encrypted under itself.

    Each half of (key XOR data variant) is TDES-encrypted under that same variant key, a
    one-way step the 2009 edition added for the data keys only.
    """
    if variant not in (TdesVariant.DATA_REQUEST, TdesVariant.DATA_RESPONSE):
        raise ValueError(f"data key needs a data variant, got {variant.name}")
    variant_key = derive_tdes_working_key(transaction_key, variant)
    return encrypt_tdes_ecb(variant_key, variant_key)


class DukptAlgorithm(enum.Enum):
    """Key types of X9.24-3 derivation data: (algorithm indicator, key length in bits)."""

    TDES_2KEY = (0x0000, 128)
    TDES_3KEY = (0x0001, 192)
    AES_128 = (0x0002, 128)
    AES_192 = (0x0003, 192)
    AES_256 = (0x0004, 256)
    HMAC_SHA256 = (0x0005, 256)

    @property
    def indicator(self) -> int:
        """Two-byte algorithm indicator in the derivation data."""
        return self.value[0]

    @property
    def key_bits(self) -> int:
        """Length of the derived key in bits."""
        return self.value[1]


class AesKeyUsage(enum.IntEnum):
    """Key usage indicators of X9.24-3-2017 derivation data."""

    KEY_ENCRYPTION_KEY = 0x0002
    PIN_ENCRYPTION = 0x1000
    MAC_GENERATION = 0x2000
    MAC_VERIFICATION = 0x2001
    MAC_BOTH_WAYS = 0x2002
    DATA_ENCRYPTION_ENCRYPT = 0x3000
    DATA_ENCRYPTION_DECRYPT = 0x3001
    DATA_ENCRYPTION_BOTH_WAYS = 0x3002
    KEY_DERIVATION = 0x8000
    KEY_DERIVATION_INITIAL_KEY = 0x8001


AES_KSN_LENGTH = 12
_AES_KEY_ALGORITHMS = {
    16: DukptAlgorithm.AES_128,
    24: DukptAlgorithm.AES_192,
    32: DukptAlgorithm.AES_256,
}


def _aes_algorithm_of(key: bytes) -> DukptAlgorithm:
    try:
        return _AES_KEY_ALGORITHMS[len(key)]
    except KeyError:
        raise ValueError(f"AES DUKPT key must be 16, 24 or 32 bytes, got {len(key)}") from None


def _derive_aes(derivation_key: bytes, usage: int, algorithm: DukptAlgorithm, tail: bytes) -> bytes:
    """X9.24-3 key derivation: one AES block per 128 bits of output, block counter from 1."""
    blocks = -(-algorithm.key_bits // 128)
    output = b""
    for block_counter in range(1, blocks + 1):
        data = (
            bytes([0x01, block_counter])
            + usage.to_bytes(2, "big")
            + algorithm.indicator.to_bytes(2, "big")
            + algorithm.key_bits.to_bytes(2, "big")
            + tail
        )
        output += encrypt_aes_ecb(derivation_key, data)
    return output[: algorithm.key_bits // 8]


def derive_aes_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    """Initial key of a device from the AES BDK and its 8-byte initial key ID.

    >>> derive_aes_initial_key(bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1"),
    ...                        bytes.fromhex("1234567890123456")).hex().upper()
    '1273671EA26AC29AFA4D1084127652A1'
    """
    if len(initial_key_id) != 8:
        raise ValueError(f"initial key ID must be 8 bytes, got {len(initial_key_id)}")
    algorithm = _aes_algorithm_of(bdk)
    return _derive_aes(bdk, AesKeyUsage.KEY_DERIVATION_INITIAL_KEY, algorithm, initial_key_id)


def _split_aes_ksn(ksn: bytes) -> tuple[bytes, int]:
    if len(ksn) != AES_KSN_LENGTH:
        raise ValueError(f"AES DUKPT KSN must be 12 bytes, got {len(ksn)}")
    return ksn[:8], int.from_bytes(ksn[8:], "big")


def derive_aes_intermediate_key(initial_key: bytes, ksn: bytes) -> bytes:
    """Intermediate derivation key for the KSN's counter, from the device initial key.

    For each set bit of the counter, most significant first, the bit is added to a working
    counter and a new derivation key is derived with usage 0x8000 over
    ``initial key ID[4:8] || working counter``.
    """
    initial_key_id, counter = _split_aes_ksn(ksn)
    algorithm = _aes_algorithm_of(initial_key)
    key = initial_key
    working_counter = 0
    for shift in range(31, -1, -1):
        bit = 1 << shift
        if counter & bit:
            working_counter |= bit
            tail = initial_key_id[4:] + working_counter.to_bytes(4, "big")
            key = _derive_aes(key, AesKeyUsage.KEY_DERIVATION, algorithm, tail)
    return key


def derive_aes_transaction_key(bdk: bytes, ksn: bytes) -> bytes:
    """Transaction (intermediate derivation) key for the KSN, from the AES BDK."""
    initial_key = derive_aes_initial_key(bdk, ksn[:8])
    return derive_aes_intermediate_key(initial_key, ksn)


def derive_aes_working_key(
    transaction_key: bytes,
    ksn: bytes,
    usage: AesKeyUsage,
    algorithm: DukptAlgorithm = DukptAlgorithm.AES_128,
) -> bytes:
    """Working key (PIN 0x1000, MAC generation 0x2000, data 0x3000, ...) of a transaction.

    The derivation data carry the full transaction counter; ``algorithm`` is the type of the
    working key, which may differ from the BDK's (e.g. a TDES key from an AES BDK).
    """
    initial_key_id, counter = _split_aes_ksn(ksn)
    tail = initial_key_id[4:] + counter.to_bytes(4, "big")
    return _derive_aes(transaction_key, usage, algorithm, tail)
