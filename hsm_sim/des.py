"""Block-cipher helpers: DES/TDES and AES in ECB/CBC, key parity and key check values.

Everything here works on raw bytes. Keys of 8, 16 or 24 bytes are accepted for TDES; an 8-byte
key means single DES and a 16-byte key means two-key TDES. Both are expanded to 24 bytes
(K1K2K1) before they reach `cryptography`, which warns on the shorter forms.

>>> encrypt_tdes_ecb(bytes.fromhex("12345678123456781234567812345678"),
...                  bytes.fromhex("0011223344556677")).hex().upper()
'ABFA6F3C28A8CB0C'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

__all__ = [
    "adjust_key_parity",
    "check_key_parity",
    "decrypt_aes_cbc",
    "decrypt_aes_ecb",
    "decrypt_tdes_cbc",
    "decrypt_tdes_ecb",
    "encrypt_aes_cbc",
    "encrypt_aes_ecb",
    "encrypt_tdes_cbc",
    "encrypt_tdes_ecb",
    "kcv_aes_cmac",
    "kcv_tdes",
    "tdes_key_24",
    "xor",
]

DES_BLOCK_SIZE = 8
AES_BLOCK_SIZE = 16


def xor(left: bytes, right: bytes) -> bytes:
    """XOR two byte strings of equal length.

    >>> xor(b"\\x0f\\xf0", b"\\xff\\xff").hex()
    'f00f'
    """
    size = len(left)
    if size != len(right):
        raise ValueError(f"xor of unequal lengths: {size} and {len(right)} bytes")
    return (int.from_bytes(left) ^ int.from_bytes(right)).to_bytes(size)


CONTEXT_POOL_MAX = 4_096  # cipher contexts kept per pool (one per key in use); cleared when full


class _ContextPool:
    """Cipher contexts kept per key, so that a key in constant use (a terminal's TAK, the
    issuer's PVK) does not pay for building a `cryptography` context on every call (about
    three quarters of a small encryption's cost).

    A context is *taken* out of the pool while it is used and given back after, so two
    callers never share one: ``dict.pop`` is atomic, and a caller that finds none builds its
    own. Only ECB contexts and CBC encryptors whose chaining value is tracked are pooled (see
    :func:`encrypt_tdes_cbc`); no context is ever finalized while pooled.
    """

    def __init__(self, make: Callable[[bytes], Any]) -> None:
        self._make = make
        self._free: dict[bytes, Any] = {}

    def take(self, key: bytes) -> Any:
        """A context for ``key``: a pooled one, or a new one."""
        context = self._free.pop(key, None)
        return self._make(key) if context is None else context

    def give(self, key: bytes, context: Any) -> None:
        """Return a context taken with :meth:`take`."""
        if len(self._free) >= CONTEXT_POOL_MAX:
            self._free.clear()
        self._free[key] = context

    def update(self, key: bytes, data: bytes) -> bytes:
        """Run whole blocks through a pooled ECB context for ``key`` (ECB holds nothing back)."""
        context = self.take(key)
        out: bytes = context.update(data)
        self.give(key, context)
        return out


_TDES_ECB_ENCRYPT = _ContextPool(
    lambda key: Cipher(TripleDES(tdes_key_24(key)), modes.ECB()).encryptor()
)
_TDES_ECB_DECRYPT = _ContextPool(
    lambda key: Cipher(TripleDES(tdes_key_24(key)), modes.ECB()).decryptor()
)
# CBC encryptors pooled with their current chaining value (the last ciphertext block).
_TDES_CBC_ENCRYPT = _ContextPool(
    lambda key: (
        Cipher(TripleDES(tdes_key_24(key)), modes.CBC(bytes(DES_BLOCK_SIZE))).encryptor(),
        bytes(DES_BLOCK_SIZE),
    )
)


def tdes_key_24(key: bytes) -> bytes:
    """Expand an 8-, 16- or 24-byte DES/TDES key to the 24-byte K1K2K3 form.

    Single DES becomes K1K1K1 and two-key TDES becomes K1K2K1, which encrypt exactly like the
    short forms but do not trigger the two-key deprecation warning in `cryptography`.
    """
    if len(key) == 8:
        return key * 3
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return key
    raise ValueError(f"DES/TDES key must be 8, 16 or 24 bytes, got {len(key)}")


def _check_blocks(data: bytes, block_size: int) -> None:
    if len(data) % block_size:
        raise ValueError(
            f"data length {len(data)} is not a multiple of the {block_size}-byte block size"
        )


def _check_iv(iv: bytes, block_size: int) -> None:
    if len(iv) != block_size:
        raise ValueError(f"IV must be {block_size} bytes, got {len(iv)}")


def encrypt_tdes_ecb(key: bytes, data: bytes) -> bytes:
    """Encrypt whole 8-byte blocks with DES/TDES in ECB mode."""
    _check_blocks(data, DES_BLOCK_SIZE)
    return _TDES_ECB_ENCRYPT.update(key, data)


def decrypt_tdes_ecb(key: bytes, data: bytes) -> bytes:
    """Decrypt whole 8-byte blocks with DES/TDES in ECB mode."""
    _check_blocks(data, DES_BLOCK_SIZE)
    return _TDES_ECB_DECRYPT.update(key, data)


def encrypt_tdes_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Encrypt whole 8-byte blocks with DES/TDES in CBC mode (no padding).

    A pooled CBC encryptor carries on from its last ciphertext block ``chain``. CBC encrypts
    the first block as E(P1 xor IV); fed P1 xor IV xor chain, the running encryptor computes
    E(P1 xor IV xor chain xor chain) = E(P1 xor IV): the same output as a fresh context
    started with ``iv``, without building one.
    """
    _check_blocks(data, DES_BLOCK_SIZE)
    _check_iv(iv, DES_BLOCK_SIZE)
    if not data:
        return b""
    encryptor, chain = _TDES_CBC_ENCRYPT.take(key)
    first = xor(xor(data[:DES_BLOCK_SIZE], iv), chain)
    out: bytes = encryptor.update(first + data[DES_BLOCK_SIZE:])
    _TDES_CBC_ENCRYPT.give(key, (encryptor, out[-DES_BLOCK_SIZE:]))
    return out


def decrypt_tdes_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Decrypt whole 8-byte blocks with DES/TDES in CBC mode (no padding)."""
    _check_blocks(data, DES_BLOCK_SIZE)
    _check_iv(iv, DES_BLOCK_SIZE)
    decryptor = Cipher(TripleDES(tdes_key_24(key)), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def encrypt_aes_ecb(key: bytes, data: bytes) -> bytes:
    """Encrypt whole 16-byte blocks with AES in ECB mode."""
    _check_blocks(data, AES_BLOCK_SIZE)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def decrypt_aes_ecb(key: bytes, data: bytes) -> bytes:
    """Decrypt whole 16-byte blocks with AES in ECB mode."""
    _check_blocks(data, AES_BLOCK_SIZE)
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def encrypt_aes_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Encrypt whole 16-byte blocks with AES in CBC mode (no padding)."""
    _check_blocks(data, AES_BLOCK_SIZE)
    _check_iv(iv, AES_BLOCK_SIZE)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def decrypt_aes_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Decrypt whole 16-byte blocks with AES in CBC mode (no padding)."""
    _check_blocks(data, AES_BLOCK_SIZE)
    _check_iv(iv, AES_BLOCK_SIZE)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _odd_parity_byte(value: int) -> int:
    # The low bit of each DES key byte is the parity bit; the other seven carry the key.
    high = value & 0xFE
    return high | (1 - bin(high).count("1") % 2)


def adjust_key_parity(key: bytes) -> bytes:
    """Return the key with every byte set to odd parity (the low bit adjusted).

    >>> adjust_key_parity(bytes.fromhex("1234567812345678")).hex().upper()
    '1334577913345779'
    """
    return bytes(_odd_parity_byte(b) for b in key)


def check_key_parity(key: bytes) -> bool:
    """True when every byte of the key has odd parity."""
    return all(bin(b).count("1") % 2 == 1 for b in key)


def kcv_tdes(key: bytes, length: int = 3) -> bytes:
    """Key check value of a DES/TDES key: leftmost bytes of the key encrypting eight zeros.

    The usual 6-hex-digit KCV is ``length=3``; Thales' legacy 16-hex form is ``length=8``.

    >>> kcv_tdes(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).hex().upper()
    '08D7B4'
    """
    if not 1 <= length <= DES_BLOCK_SIZE:
        raise ValueError(f"KCV length must be 1..8 bytes, got {length}")
    return encrypt_tdes_ecb(key, bytes(DES_BLOCK_SIZE))[:length]


def kcv_aes_cmac(key: bytes, length: int = 5) -> bytes:
    """Key check value of an AES key: leftmost bytes of AES-CMAC over 16 zero bytes.

    This is the KCV method of ANSI X9.24-1:2017 / TR-31 for AES keys (5 bytes by default).
    """
    if not 1 <= length <= AES_BLOCK_SIZE:
        raise ValueError(f"KCV length must be 1..16 bytes, got {length}")
    cmac = CMAC(algorithms.AES(key))
    cmac.update(bytes(AES_BLOCK_SIZE))
    return cmac.finalize()[:length]
