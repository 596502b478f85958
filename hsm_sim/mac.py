"""Message authentication codes: ISO 9797-1 algorithms 1 and 3, ANSI X9.9/X9.19, AES-CMAC.

Each function returns the full MAC block; callers truncate (a Thales M6 or an ISO 8583 field
64/128 usually keeps the leftmost 4 or 8 bytes).

>>> key = bytes.fromhex("41414141414141414242424242424242")
>>> generate_mac_iso9797_1_alg_3(key, b"hello world", padding=1).hex().upper()
'3DDE5C5511661CBF'
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from hsm_sim.des import DES_BLOCK_SIZE, encrypt_tdes_cbc, encrypt_tdes_ecb, xor

__all__ = [
    "generate_mac_aes_cmac",
    "generate_mac_iso9797_1_alg_1",
    "generate_mac_iso9797_1_alg_3",
    "generate_mac_x9_9",
    "generate_mac_x9_19",
    "pad_iso9797_1",
    "pad_iso9797_1_method_1",
    "pad_iso9797_1_method_2",
    "pad_iso9797_1_method_3",
]


def pad_iso9797_1_method_1(data: bytes, block_size: int = DES_BLOCK_SIZE) -> bytes:
    """Method 1: zero bytes up to a whole block; empty data becomes one zero block."""
    if data and len(data) % block_size == 0:
        return data
    return data + bytes(block_size - len(data) % block_size)


def pad_iso9797_1_method_2(data: bytes, block_size: int = DES_BLOCK_SIZE) -> bytes:
    """Method 2: a single 0x80 byte, then zero bytes up to a whole block (always pads)."""
    return pad_iso9797_1_method_1(data + b"\x80", block_size)


def pad_iso9797_1_method_3(data: bytes, block_size: int = DES_BLOCK_SIZE) -> bytes:
    """Method 3: a block holding the data length in bits (big-endian), then method 1."""
    length_block = (len(data) * 8).to_bytes(block_size, "big")
    return length_block + pad_iso9797_1_method_1(data, block_size)


def pad_iso9797_1(data: bytes, padding: int, block_size: int = DES_BLOCK_SIZE) -> bytes:
    """Pad with ISO 9797-1 method ``padding`` (1, 2 or 3)."""
    if padding == 1:
        return pad_iso9797_1_method_1(data, block_size)
    if padding == 2:
        return pad_iso9797_1_method_2(data, block_size)
    if padding == 3:
        return pad_iso9797_1_method_3(data, block_size)
    raise ValueError(f"ISO 9797-1 padding method must be 1, 2 or 3, got {padding}")


def generate_mac_iso9797_1_alg_1(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ISO 9797-1 MAC algorithm 1 (CBC-MAC, zero IV) with a DES or TDES key; 8 bytes."""
    padded = pad_iso9797_1(data, padding)
    return encrypt_tdes_cbc(key, bytes(DES_BLOCK_SIZE), padded)[-DES_BLOCK_SIZE:]


def generate_mac_iso9797_1_alg_3(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ISO 9797-1 MAC algorithm 3 (the ANSI X9.19 retail MAC) with a double-length key.

    All blocks are chained with single DES under the left half; the last chained block is
    then encrypted with the full two-key TDES (equivalently: decrypt with the right half and
    encrypt again with the left).
    """
    if len(key) != 16:
        raise ValueError(f"retail MAC key must be 16 bytes, got {len(key)}")
    padded = pad_iso9797_1(data, padding)
    chain = bytes(DES_BLOCK_SIZE)
    if len(padded) > DES_BLOCK_SIZE:
        chain = encrypt_tdes_cbc(key[:8], chain, padded[:-DES_BLOCK_SIZE])[-DES_BLOCK_SIZE:]
    return encrypt_tdes_ecb(key, xor(chain, padded[-DES_BLOCK_SIZE:]))


def generate_mac_x9_19(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ANSI X9.19 retail MAC: the same as ISO 9797-1 algorithm 3."""
    return generate_mac_iso9797_1_alg_3(key, data, padding)


def generate_mac_x9_9(key: bytes, data: bytes) -> bytes:
    """ANSI X9.9 MAC: ISO 9797-1 algorithm 1 with single DES and zero padding."""
    if len(key) != 8:
        raise ValueError(f"X9.9 MAC key must be a single-length 8-byte key, got {len(key)}")
    return generate_mac_iso9797_1_alg_1(key, data, padding=1)


def generate_mac_aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (NIST SP 800-38B, ISO 9797-1 algorithm 5); 16 bytes."""
    cmac = CMAC(algorithms.AES(key))
    cmac.update(data)
    return cmac.finalize()
