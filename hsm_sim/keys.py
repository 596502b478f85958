"""The Thales variant LMK: LMK pairs, key-type codes, key schemes, keys under the LMK.

A key at rest is encrypted under an LMK pair chosen by its key-type code ``VPP``: ``PP`` picks
the LMK pair (table below) and ``V`` a variant XORed into the pair's first byte. The key
scheme tag picks the layout: ``Z`` single, ``U`` double and ``T`` triple length with the
half/third variants of the double/triple-length variant scheme, ``X``/``Y`` double/triple
length in plain ECB (X9.17), and untagged 16/32 hex characters as single/double length ECB.

>>> lmk = Lmk.test()
>>> clear = bytes.fromhex("12345678123456781234567812345678")
>>> encrypt_key_under_lmk(lmk, clear, "001", "U")
'U34E2FC8EAD7CD07BFA2B7ED5FE4D8212'
>>> decrypt_key_under_lmk(lmk, "U34E2FC8EAD7CD07BFA2B7ED5FE4D8212", "001").hex().upper()
'13345779133457791334577913345779'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hsm_sim.des import adjust_key_parity, decrypt_tdes_ecb, encrypt_tdes_ecb, xor

__all__ = [
    "KEY_TYPES",
    "KeyFormatError",
    "KeyType",
    "Lmk",
    "decrypt_key_under_lmk",
    "encrypt_key_under_lmk",
    "parse_key_type",
    "split_key_string",
]

LMK_PAIR_COUNT = 20
LMK_PAIR_LENGTH = 16

# Thales test LMK set (LMK pairs 00-01 .. 38-39), as published with the ThalesSim simulator
# and used by jPOS' tests; with it our results match published transcripts byte for byte.
_TEST_LMK_HEX = (
    "01010101010101017902CD1FD36EF8BA",
    "20202020202020203131313131313131",
    "40404040404040405151515151515151",
    "61616161616161617070707070707070",
    "80808080808080809191919191919191",
    "A1A1A1A1A1A1A1A1B0B0B0B0B0B0B0B0",
    "C1C1010101010101D0D0010101010101",
    "E0E0010101010101F1F1010101010101",
    "1C587F1C13924FEF0101010101010101",
    "01010101010101010101010101010101",
    "02020202020202020404040404040404",
    "07070707070707071010101010101010",
    "13131313131313131515151515151515",
    "16161616161616161919191919191919",
    "1A1A1A1A1A1A1A1A1C1C1C1C1C1C1C1C",
    "23232323232323232525252525252525",
    "26262626262626262929292929292929",
    "2A2A2A2A2A2A2A2A2C2C2C2C2C2C2C2C",
    "2F2F2F2F2F2F2F2F3131313131313131",
    "01010101010101010101010101010101",
)

# Key-type variants 1..9, XORed into byte 0 of the LMK pair.
_KEY_TYPE_VARIANTS = bytes.fromhex("A65A6ADE2B50749CFA")
# Double/triple-length variant scheme: XORed into byte 8 of the LMK pair for each part.
_SCHEME_U_VARIANTS = bytes.fromhex("A65A")
_SCHEME_T_VARIANTS = bytes.fromhex("6ADE2B")

# LMK code (the PP of VPP) -> index of the LMK pair (pair 04-05 is index 2).
_LMK_CODE_TO_PAIR: dict[str, int] = {
    "00": 2,  # 04-05 ZMK
    "01": 3,  # 06-07 ZPK
    "02": 7,  # 14-15 TMK, TPK, PVK (CVK under variant 4)
    "03": 8,  # 16-17 TAK
    "04": 9,  # 18-19
    "05": 10,  # 20-21
    "06": 11,  # 22-23
    "07": 12,  # 24-25
    "08": 13,  # 26-27 ZAK
    "09": 14,  # 28-29 BDK, EMV master keys
    "0A": 15,  # 30-31 ZEK
    "0B": 16,  # 32-33 DEK, TEK
    "0C": 17,  # 34-35
    "0D": 18,  # 36-37
    "0E": 19,  # 38-39
}

# Key lengths (bytes) and whether the scheme uses the per-part variants.
_SCHEMES: dict[str, tuple[int, bool]] = {
    "Z": (8, False),
    "U": (16, True),
    "T": (24, True),
    "X": (16, False),
    "Y": (24, False),
    "": (0, False),  # untagged: length from the hex
}


class KeyFormatError(ValueError):
    """A key, key-type code, scheme or LMK that cannot be used; the message says why."""


@dataclass(frozen=True)
class KeyType:
    """A parsed key-type code ``VPP``: variant 0-9 and LMK pair index 0-19."""

    code: str
    variant: int
    lmk_pair: int


KEY_TYPES: dict[str, str] = {
    "000": "ZMK",
    "001": "ZPK",
    "002": "TMK / TPK / PVK",
    "003": "TAK",
    "008": "ZAK",
    "009": "BDK",
    "00A": "ZEK",
    "00B": "DEK / TEK",
    "109": "MK-AC",
    "402": "CVK",
    "709": "MK-CVC3",
}
"""Key-type codes the switch and the vectors use (others of the VPP form also parse)."""


def parse_key_type(code: str) -> KeyType:
    """Parse a 3-character key-type code such as ``"002"`` or ``"402"``."""
    if len(code) != 3:
        raise KeyFormatError(f"key type must be 3 characters (VPP), got {code!r}")
    variant_char, lmk_code = code[0], code[1:].upper()
    if not variant_char.isdigit():
        raise KeyFormatError(f"key type {code!r}: variant must be a digit 0-9")
    if lmk_code not in _LMK_CODE_TO_PAIR:
        raise KeyFormatError(f"key type {code!r}: unknown LMK code {lmk_code!r}")
    return KeyType(code.upper(), int(variant_char), _LMK_CODE_TO_PAIR[lmk_code])


def _parse_hex_key(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KeyFormatError(f"{what} is not hexadecimal") from None


class Lmk:
    """A variant LMK: 20 double-length DES key pairs (00-01 .. 38-39)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: tuple[bytes, ...]) -> None:
        if len(pairs) != LMK_PAIR_COUNT:
            raise KeyFormatError(f"an LMK has {LMK_PAIR_COUNT} pairs, got {len(pairs)}")
        for index, pair in enumerate(pairs):
            if len(pair) != LMK_PAIR_LENGTH:
                raise KeyFormatError(f"LMK pair {index} must be 16 bytes, got {len(pair)}")
        self._pairs = tuple(bytes(p) for p in pairs)

    def __repr__(self) -> str:
        # Never print key material; the check value identifies the LMK.
        return f"Lmk(check_value={self.check_value()!r})"

    @classmethod
    def test(cls) -> Lmk:
        """The Thales test LMK set (the default of simulators and of our demo)."""
        return cls(tuple(bytes.fromhex(h) for h in _TEST_LMK_HEX))

    @classmethod
    def from_lines(cls, lines: list[str], source: str = "LMK") -> Lmk:
        """Build from 20 lines of 32 hex characters; blank lines and ``#`` comments ignored."""
        pairs: list[bytes] = []
        for number, raw in enumerate(lines, start=1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            if len(text) != 32:
                raise KeyFormatError(
                    f"{source} line {number}: expected 32 hex characters, got {len(text)}"
                )
            pairs.append(_parse_hex_key(text, f"{source} line {number}"))
        if len(pairs) != LMK_PAIR_COUNT:
            raise KeyFormatError(f"{source}: expected {LMK_PAIR_COUNT} LMK pairs, got {len(pairs)}")
        return cls(tuple(pairs))

    @classmethod
    def from_file(cls, path: str | Path) -> Lmk:
        """Read an LMK file: 20 lines of 32 hex characters (pairs 00-01 to 38-39)."""
        file_path = Path(path)
        return cls.from_lines(file_path.read_text(encoding="ascii").splitlines(), str(file_path))

    def pair(self, index: int) -> bytes:
        """LMK pair ``index`` (0 = pair 00-01, ..., 19 = pair 38-39)."""
        return self._pairs[index]

    def key_for(self, key_type: KeyType) -> bytes:
        """The LMK pair of the key type with its key-type variant applied."""
        pair = self._pairs[key_type.lmk_pair]
        if key_type.variant == 0:
            return pair
        return bytes([pair[0] ^ _KEY_TYPE_VARIANTS[key_type.variant - 1]]) + pair[1:]

    def material(self) -> bytes:
        """All 320 bytes of the LMK, for deriving non-Thales keys (PAN hashing) inside hsm_sim."""
        return b"".join(self._pairs)

    def check_value(self) -> str:
        """LMK check value as our NC reports it: 16 hex characters.

        The XOR of all 20 pairs, folded to 8 bytes (left half XOR right half): the convention
        of the public simulators (ThalesSim, hsmsim); a real payShield's algorithm is not public.
        """
        folded = bytes(LMK_PAIR_LENGTH)
        for pair in self._pairs:
            folded = xor(folded, pair)
        return xor(folded[:8], folded[8:]).hex().upper()


def split_key_string(key_string: str) -> tuple[str, bytes]:
    """Split ``"U" + 32 hex`` (etc.) into the scheme tag ("" if untagged) and the bytes."""
    if key_string[:1].upper() in ("Z", "U", "T", "X", "Y"):
        scheme, hex_part = key_string[0].upper(), key_string[1:]
        expected = _SCHEMES[scheme][0] * 2
        if len(hex_part) != expected:
            raise KeyFormatError(
                f"scheme {scheme} needs {expected} hex characters, got {len(hex_part)}"
            )
    else:
        scheme, hex_part = "", key_string
        if len(hex_part) not in (16, 32):
            raise KeyFormatError(
                f"untagged key must be 16 or 32 hex characters, got {len(hex_part)}"
            )
    return scheme, _parse_hex_key(hex_part, f"key {key_string[:1]}...")


def _part_keys(lmk_key: bytes, scheme: str, length: int) -> list[bytes]:
    """One LMK key per 8-byte part of the protected key."""
    use_variants = _SCHEMES[scheme][1]
    if not use_variants:
        return [lmk_key] * (length // 8)
    variants = _SCHEME_U_VARIANTS if scheme == "U" else _SCHEME_T_VARIANTS
    return [lmk_key[:8] + bytes([lmk_key[8] ^ v]) + lmk_key[9:] for v in variants]


def encrypt_key_under_lmk(lmk: Lmk, clear_key: bytes, key_type: str, scheme: str = "U") -> str:
    """Encrypt a clear key under the LMK; returns the scheme tag and uppercase hex.

    The key is forced to odd parity first, as the HSM stores it. ``scheme`` is ``Z``, ``U``,
    ``T``, ``X``, ``Y`` or ``""`` for untagged single/double length.
    """
    scheme = scheme.upper()
    if scheme not in _SCHEMES:
        raise KeyFormatError(f"unknown key scheme {scheme!r}")
    length = _SCHEMES[scheme][0]
    if scheme == "" and len(clear_key) not in (8, 16):
        raise KeyFormatError(f"untagged keys are 8 or 16 bytes, got {len(clear_key)}")
    if length and len(clear_key) != length:
        raise KeyFormatError(f"scheme {scheme} needs a {length}-byte key, got {len(clear_key)}")
    lmk_key = lmk.key_for(parse_key_type(key_type))
    key = adjust_key_parity(clear_key)
    parts = _part_keys(lmk_key, scheme, len(key))
    encrypted = b"".join(
        encrypt_tdes_ecb(part_key, key[8 * i : 8 * i + 8]) for i, part_key in enumerate(parts)
    )
    return scheme + encrypted.hex().upper()


def decrypt_key_under_lmk(lmk: Lmk, key_string: str, key_type: str) -> bytes:
    """Decrypt a key held under the LMK (e.g. ``"U34E2..."``); returns the clear key bytes.

    Parity is not checked here: callers decide whether a parity error is fatal (Thales
    error 10/11) or a warning.
    """
    scheme, encrypted = split_key_string(key_string)
    lmk_key = lmk.key_for(parse_key_type(key_type))
    parts = _part_keys(lmk_key, scheme, len(encrypted))
    return b"".join(
        decrypt_tdes_ecb(part_key, encrypted[8 * i : 8 * i + 8]) for i, part_key in enumerate(parts)
    )
