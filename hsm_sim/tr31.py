"""ANSI X9.143 / ASC X9 TR-31 key blocks, versions A, B, C and D.

A key block is ``header || hex(encrypted key data) || hex(MAC)``. The header is 16 ASCII
characters (version, block length, key usage, algorithm, mode of use, key version number,
exportability, number of optional blocks, reserved) followed by the optional blocks.

=======  ===================  ===============================  =======================
version  KBPK                 KBEK / KBAK                      MAC
=======  ===================  ===============================  =======================
A, C     TDES (16/24 bytes)   KBPK XOR 0x45.. / KBPK XOR 0x4D  4-byte CBC-MAC over
                                                               header || ciphertext
B        TDES (16/24 bytes)   TDES-CMAC counter KDF            8-byte CMAC over
                                                               header || clear key data
D        AES (16/24/32)       AES-CMAC counter KDF             16-byte CMAC, likewise
=======  ===================  ===============================  =======================

For B and D the MAC is also the CBC IV of the key data; for A and C the IV is the first
8 header bytes.

>>> kbpk = bytes.fromhex("89E88CF7931444F334BD7547FC3F380C")
>>> header, key = unwrap_tr31(kbpk, "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD2419"
...                                 "2FDB3193C730301CEE8701")
>>> key.hex().upper(), header.key_usage
('F039121BEC83D26B169BDCD5B22AAF8F', 'P0')
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from hsm_sim.des import (
    decrypt_aes_cbc,
    decrypt_tdes_cbc,
    encrypt_aes_cbc,
    encrypt_tdes_cbc,
    tdes_key_24,
    xor,
)
from hsm_sim.mac import generate_mac_iso9797_1_alg_1

__all__ = ["Tr31Error", "Tr31Header", "parse_tr31_header", "unwrap_tr31", "wrap_tr31"]

HEADER_LENGTH = 16
VERSIONS = "ABCD"
_MAC_LENGTH = {"A": 4, "B": 8, "C": 4, "D": 16}
_BLOCK_SIZE = {"A": 8, "B": 8, "C": 8, "D": 16}
_HEX = set("0123456789ABCDEF")


class Tr31Error(ValueError):
    """A key block that cannot be parsed, built or authenticated; the message says why."""


@dataclass(frozen=True)
class Tr31Header:
    """The header of a key block; ``optional_blocks`` keeps (id, data) pairs in order."""

    version_id: str
    key_usage: str
    algorithm: str
    mode_of_use: str
    version_number: str = "00"
    exportability: str = "N"
    reserved: str = "00"
    optional_blocks: tuple[tuple[str, str], ...] = ()

    def encode(self, block_length: int) -> str:
        """ASCII header (fixed part and optional blocks) for a block of ``block_length``."""
        blocks = "".join(_encode_optional_block(i, d) for i, d in self.optional_blocks)
        return (
            f"{self.version_id}{block_length:04d}{self.key_usage}{self.algorithm}"
            f"{self.mode_of_use}{self.version_number}{self.exportability}"
            f"{len(self.optional_blocks):02d}{self.reserved}{blocks}"
        )


def _encode_optional_block(block_id: str, data: str) -> str:
    length = 4 + len(data)
    if length <= 0xFF:
        return f"{block_id}{length:02X}{data}"
    # Extended length: "00", the length of the length field, then the length itself.
    return f"{block_id}0004{length + 4:04X}{data}"


def parse_tr31_header(key_block: str) -> tuple[Tr31Header, int]:
    """Parse the header and optional blocks; returns the header and its length in characters."""
    if len(key_block) < HEADER_LENGTH:
        raise Tr31Error(f"key block of {len(key_block)} characters is shorter than a header")
    if not key_block.isascii() or not key_block.isprintable():
        raise Tr31Error("key block must be printable ASCII")
    version = key_block[0]
    if version not in VERSIONS:
        raise Tr31Error(f"unsupported key block version {version!r}")
    length_field = key_block[1:5]
    if not length_field.isdigit():
        raise Tr31Error(f"key block length {length_field!r} is not numeric")
    if int(length_field) != len(key_block):
        raise Tr31Error(f"header says {int(length_field)} characters, block has {len(key_block)}")
    count_field = key_block[12:14]
    if not count_field.isdigit():
        raise Tr31Error(f"number of optional blocks {count_field!r} is not numeric")
    position = HEADER_LENGTH
    blocks: list[tuple[str, str]] = []
    for index in range(int(count_field)):
        block_id = key_block[position : position + 2]
        length_hex = key_block[position + 2 : position + 4]
        if len(length_hex) != 2 or not set(length_hex) <= _HEX:
            raise Tr31Error(f"optional block {index + 1} ({block_id!r}) has a bad length field")
        length = int(length_hex, 16)
        data_start = position + 4
        if length == 0:
            size_hex = key_block[position + 4 : position + 6]
            if len(size_hex) != 2 or not set(size_hex) <= _HEX:
                raise Tr31Error(f"optional block {block_id!r} has a bad extended length")
            size = int(size_hex, 16)
            extended = key_block[position + 6 : position + 6 + size]
            if len(extended) != size or not set(extended) <= _HEX:
                raise Tr31Error(f"optional block {block_id!r} has a bad extended length")
            length = int(extended, 16)
            data_start = position + 6 + size
        if length < data_start - position or position + length > len(key_block):
            raise Tr31Error(f"optional block {block_id!r} length {length} is out of range")
        blocks.append((block_id, key_block[data_start : position + length]))
        position += length
    header = Tr31Header(
        version_id=version,
        key_usage=key_block[5:7],
        algorithm=key_block[7],
        mode_of_use=key_block[8],
        version_number=key_block[9:11],
        exportability=key_block[11],
        reserved=key_block[14:16],
        optional_blocks=tuple(blocks),
    )
    return header, position


def _cmac(key: bytes, data: bytes, *, aes: bool) -> bytes:
    cmac = CMAC(algorithms.AES(key) if aes else TripleDES(tdes_key_24(key)))
    cmac.update(data)
    return cmac.finalize()


def _derive_keys(version: str, kbpk: bytes) -> tuple[bytes, bytes]:
    """(KBEK, KBAK) for the version."""
    if version in "AC":
        if len(kbpk) not in (16, 24):
            raise Tr31Error(f"version {version} needs a TDES KBPK, got {len(kbpk)} bytes")
        return xor(kbpk, b"\x45" * len(kbpk)), xor(kbpk, b"\x4d" * len(kbpk))
    if version == "B":
        if len(kbpk) not in (16, 24):
            raise Tr31Error(f"version B needs a TDES KBPK, got {len(kbpk)} bytes")
        algorithm, bits, aes = (0x0000, 128, False) if len(kbpk) == 16 else (0x0001, 192, False)
    else:
        if len(kbpk) not in (16, 24, 32):
            raise Tr31Error(f"version D needs an AES KBPK, got {len(kbpk)} bytes")
        algorithm, bits, aes = {16: (2, 128, True), 24: (3, 192, True), 32: (4, 256, True)}[
            len(kbpk)
        ]
    out_size = 16 if aes else 8
    derived: list[bytes] = []
    for usage in (0x0000, 0x0001):  # encryption key, then authentication key
        material = b""
        counter = 1
        while len(material) < bits // 8:
            data = (
                bytes([counter])
                + usage.to_bytes(2, "big")
                + b"\x00"
                + algorithm.to_bytes(2, "big")
                + bits.to_bytes(2, "big")
            )
            material += _cmac(kbpk, data, aes=aes)[:out_size]
            counter += 1
        derived.append(material[: bits // 8])
    return derived[0], derived[1]


def _mac(version: str, kbak: bytes, data: bytes) -> bytes:
    if version in "AC":
        return generate_mac_iso9797_1_alg_1(kbak, data, padding=1)[:4]
    return _cmac(kbak, data, aes=version == "D")


def wrap_tr31(
    kbpk: bytes,
    header: Tr31Header,
    key: bytes,
    *,
    masked_key_length: int | None = None,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> str:
    """Build a key block protecting ``key`` under ``kbpk``.

    ``masked_key_length`` (bytes) pads short keys as if they were that long, hiding their
    length; a padding block "PB" is added when optional blocks leave the header unaligned.
    """
    version = header.version_id
    if version not in VERSIONS:
        raise Tr31Error(f"unsupported key block version {version!r}")
    block_size = _BLOCK_SIZE[version]
    if header.optional_blocks:
        unaligned = len(header.encode(0)) % block_size
        if unaligned:
            pad = block_size - unaligned
            pad += block_size if pad < 4 else 0
            header = replace(
                header, optional_blocks=(*header.optional_blocks, ("PB", "0" * (pad - 4)))
            )
    kbek, kbak = _derive_keys(version, kbpk)
    hidden_length = max(len(key), masked_key_length or 0)
    pad_length = -(2 + hidden_length) % block_size + hidden_length - len(key)
    clear_data = (len(key) * 8).to_bytes(2, "big") + key + random_bytes(pad_length)
    mac_length = _MAC_LENGTH[version]
    total_length = len(header.encode(0)) + 2 * len(clear_data) + 2 * mac_length
    header_text = header.encode(total_length)
    if version in "AC":
        encrypted = encrypt_tdes_cbc(kbek, header_text.encode("ascii")[:8], clear_data)
        mac = _mac(version, kbak, header_text.encode("ascii") + encrypted)
    else:
        mac = _mac(version, kbak, header_text.encode("ascii") + clear_data)
        if version == "B":
            encrypted = encrypt_tdes_cbc(kbek, mac, clear_data)
        else:
            encrypted = encrypt_aes_cbc(kbek, mac, clear_data)
    return header_text + encrypted.hex().upper() + mac.hex().upper()


def unwrap_tr31(kbpk: bytes, key_block: str) -> tuple[Tr31Header, bytes]:
    """Authenticate and decrypt a key block; returns its header and the clear key."""
    header, header_length = parse_tr31_header(key_block)
    version = header.version_id
    block_size = _BLOCK_SIZE[version]
    mac_hex_length = 2 * _MAC_LENGTH[version]
    body = key_block[header_length:]
    if header_length % block_size:
        raise Tr31Error(f"header length {header_length} is not a multiple of {block_size}")
    if not set(body) <= _HEX:
        raise Tr31Error("key data and MAC must be uppercase hexadecimal")
    data_hex, mac_hex = body[:-mac_hex_length], body[-mac_hex_length:]
    if len(body) < mac_hex_length + 2 * block_size or len(data_hex) % (2 * block_size):
        raise Tr31Error(f"key data of {len(data_hex)} hex characters is not whole blocks")
    encrypted, received_mac = bytes.fromhex(data_hex), bytes.fromhex(mac_hex)
    header_bytes = key_block[:header_length].encode("ascii")
    kbek, kbak = _derive_keys(version, kbpk)
    if version in "AC":
        expected = _mac(version, kbak, header_bytes + encrypted)
        if not hmac.compare_digest(expected, received_mac):
            raise Tr31Error("key block MAC does not verify (wrong KBPK or altered block)")
        clear_data = decrypt_tdes_cbc(kbek, header_bytes[:8], encrypted)
    else:
        if version == "B":
            clear_data = decrypt_tdes_cbc(kbek, received_mac, encrypted)
        else:
            clear_data = decrypt_aes_cbc(kbek, received_mac, encrypted)
        expected = _mac(version, kbak, header_bytes + clear_data)
        if not hmac.compare_digest(expected, received_mac):
            raise Tr31Error("key block MAC does not verify (wrong KBPK or altered block)")
    key_bits = int.from_bytes(clear_data[:2], "big")
    if key_bits % 8 or key_bits // 8 > len(clear_data) - 2:
        raise Tr31Error(f"key length {key_bits} bits does not fit the key data")
    return header, clear_data[2 : 2 + key_bits // 8]
