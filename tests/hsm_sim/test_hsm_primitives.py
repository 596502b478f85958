"""Error paths and round trips of the hsm_sim primitives, plus the import rule of the core."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import des, keys, pinblock, tr31
from hsm_sim.pinblock import PinBlockError

HSM_SIM_DIR = Path(__file__).resolve().parents[2] / "hsm_sim"
FORBIDDEN_IMPORTS = {"asyncio", "socket", "time", "random", "sqlalchemy"}
# The TCP face wraps the core and may use asyncio (as tests/test_architecture.py allows).
TRANSPORT_MODULES = {"server.py", "client.py"}

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PAN = "5555555551234567"


def test_core_imports_no_io_clock_or_random() -> None:
    for path in sorted(HSM_SIM_DIR.glob("*.py")):
        if path.name in TRANSPORT_MODULES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN_IMPORTS, f"{path.name} imports {name}"


# --- PIN blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block_hex", "reason"),
    [
        ("141261AAAAEDCBA9", "control field is 1"),
        ("031261AAAAEDCBA9", "PIN length 3"),
        ("0D1261AAAAEDCBA9", "PIN length 13"),
        ("04A261AAAAEDCBA9", "non-decimal"),
        ("041261AAAAEDCBA8", "fill"),
    ],
)
def test_iso_0_decode_rejects(block_hex: str, reason: str) -> None:
    with pytest.raises(PinBlockError, match=reason):
        pinblock.decode_pinblock_iso_0(bytes.fromhex(block_hex), PAN)


def test_iso_0_rejects_bad_inputs() -> None:
    with pytest.raises(PinBlockError, match="PIN length 3"):
        pinblock.encode_pinblock_iso_0("123", PAN)
    with pytest.raises(PinBlockError, match="decimal digits"):
        pinblock.encode_pinblock_iso_0("12a4", PAN)
    with pytest.raises(PinBlockError, match="PAN must contain decimal digits"):
        pinblock.encode_pinblock_iso_0("1234", "5555-5555")
    with pytest.raises(PinBlockError, match="8 bytes"):
        pinblock.decode_pinblock_iso_0(b"\x00" * 9, PAN)


def test_iso_3_rejects_f_only_fill_outside_a_to_f() -> None:
    clear = pinblock.encode_pinblock_iso_0("1234", PAN)  # fill F is legal for format 3 ...
    format_3 = bytes([0x30 | (clear[0] & 0x0F)]) + clear[1:]
    assert pinblock.decode_pinblock_iso_3(format_3, PAN) == "1234"
    with pytest.raises(PinBlockError, match="control field"):
        pinblock.decode_pinblock_iso_3(clear, PAN)


@settings(max_examples=50, deadline=None)
@given(
    pin=st.text("0123456789", min_size=4, max_size=12),
    pan=st.text("0123456789", min_size=13, max_size=19),
)
def test_pin_block_round_trips(pin: str, pan: str) -> None:
    assert (
        pinblock.decipher_pinblock_iso_0(KEY, pinblock.encipher_pinblock_iso_0(KEY, pin, pan), pan)
        == pin
    )
    assert pinblock.decipher_pinblock_iso_1(KEY, pinblock.encipher_pinblock_iso_1(KEY, pin)) == pin
    assert (
        pinblock.decipher_pinblock_iso_3(KEY, pinblock.encipher_pinblock_iso_3(KEY, pin, pan), pan)
        == pin
    )
    assert pinblock.decode_pinblock_ibm_3624(pinblock.encode_pinblock_ibm_3624(pin)) == pin
    assert pinblock.decode_pan_field_iso_4(pinblock.encode_pan_field_iso_4(pan)) == pan


def test_fill_sources() -> None:
    fixed = pinblock.encode_pinblock_iso_1("1234", bytes.fromhex("0123456789ABCDEF"))
    assert fixed.hex().upper() == "1412340123456789"
    with pytest.raises(ValueError, match=r"A\.\.F"):
        pinblock.encode_pinblock_iso_3("1234", PAN, bytes.fromhex("0000000000000000"))
    # 0x05 maps to nibble F; 0xFF is rejected (it would bias the A-F choice).
    block = pinblock.encode_pinblock_iso_3("1234", PAN, lambda n: b"\x05" * n)
    assert block == bytes.fromhex("341261AAAAEDCBA9")
    with pytest.raises(ValueError, match="no usable fill"):
        pinblock.encode_pinblock_iso_3("1234", PAN, lambda n: b"\xff" * n)
    field = pinblock.encode_pin_field_iso_4("1234", lambda n: bytes(n))
    assert field[8:] == bytes(8)


def test_iso_4_wrong_key_is_invalid() -> None:
    aes_key = bytes(range(16))
    block = pinblock.encipher_pinblock_iso_4(aes_key, "1234", PAN)
    with pytest.raises(PinBlockError):
        pinblock.decipher_pinblock_iso_4(bytes(16), block, PAN)


# --- DES helpers --------------------------------------------------------------------------


def test_parity() -> None:
    adjusted = des.adjust_key_parity(bytes.fromhex("12345678123456781234567812345678"))
    assert adjusted.hex().upper() == "13345779133457791334577913345779"
    assert des.check_key_parity(adjusted)
    assert not des.check_key_parity(bytes.fromhex("1234567812345678"))


def test_des_helpers_reject_bad_lengths() -> None:
    with pytest.raises(ValueError, match="8, 16 or 24"):
        des.encrypt_tdes_ecb(bytes(10), bytes(8))
    with pytest.raises(ValueError, match="multiple"):
        des.encrypt_tdes_ecb(KEY, bytes(7))
    with pytest.raises(ValueError, match="IV"):
        des.encrypt_tdes_cbc(KEY, bytes(4), bytes(8))
    with pytest.raises(ValueError, match="unequal"):
        des.xor(b"a", b"ab")


# --- keys / LMK ---------------------------------------------------------------------------


def _lmk_lines() -> list[str]:
    return [keys.Lmk.test().pair(i).hex().upper() for i in range(20)]


def test_lmk_from_file(tmp_path: Path) -> None:
    path = tmp_path / "lmk.txt"
    path.write_text("# test LMK\n" + "\n".join(_lmk_lines()) + "\n", encoding="ascii")
    lmk = keys.Lmk.from_file(path)
    assert lmk.check_value() == keys.Lmk.test().check_value()
    assert len(lmk.check_value()) == 16


def test_lmk_from_file_names_the_bad_line(tmp_path: Path) -> None:
    lines = _lmk_lines()
    lines[4] = lines[4][:-1] + "G"
    path = tmp_path / "lmk.txt"
    path.write_text("\n".join(lines), encoding="ascii")
    with pytest.raises(keys.KeyFormatError, match="line 5 is not hexadecimal"):
        keys.Lmk.from_file(path)
    lines[4] = "ABC"
    path.write_text("\n".join(lines), encoding="ascii")
    with pytest.raises(keys.KeyFormatError, match="line 5: expected 32"):
        keys.Lmk.from_file(path)
    path.write_text("\n".join(_lmk_lines()[:19]), encoding="ascii")
    with pytest.raises(keys.KeyFormatError, match="expected 20 LMK pairs, got 19"):
        keys.Lmk.from_file(path)


@pytest.mark.parametrize("scheme", ["Z", "U", "T", "X", "Y", ""])
def test_key_under_lmk_round_trip(scheme: str) -> None:
    lmk = keys.Lmk.test()
    length = {"Z": 8, "U": 16, "T": 24, "X": 16, "Y": 24, "": 16}[scheme]
    clear = des.adjust_key_parity(bytes(range(1, length + 1)))
    for key_type in ("000", "001", "002", "003", "009", "402"):
        encrypted = keys.encrypt_key_under_lmk(lmk, clear, key_type, scheme)
        assert encrypted[:1] == scheme[:1] or scheme == ""
        assert keys.decrypt_key_under_lmk(lmk, encrypted, key_type) == clear


def test_key_type_selects_pair_and_variant() -> None:
    lmk = keys.Lmk.test()
    clear = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    results = {keys.encrypt_key_under_lmk(lmk, clear, t, "U") for t in ("002", "402", "003")}
    assert len(results) == 3
    assert keys.parse_key_type("402") == keys.KeyType("402", 4, 7)
    assert keys.parse_key_type("009").lmk_pair == 14


@pytest.mark.parametrize(
    ("key_string", "key_type", "reason"),
    [
        ("U1234", "002", "scheme U needs 32"),
        ("ABCDEF", "002", "untagged key must be 16 or 32"),
        ("ZZZZZZZZZZZZZZZZZ", "002", "not hexadecimal"),
        ("0406FBB23A5214DF", "0Z2", "unknown LMK code"),
        ("0406FBB23A5214DF", "A02", "variant must be a digit"),
        ("0406FBB23A5214DF", "02", "3 characters"),
    ],
)
def test_key_format_errors(key_string: str, key_type: str, reason: str) -> None:
    with pytest.raises(keys.KeyFormatError, match=reason):
        keys.decrypt_key_under_lmk(keys.Lmk.test(), key_string, key_type)


def test_encrypt_rejects_wrong_length_for_scheme() -> None:
    with pytest.raises(keys.KeyFormatError, match="scheme U needs a 16-byte key"):
        keys.encrypt_key_under_lmk(keys.Lmk.test(), bytes(8), "002", "U")
    with pytest.raises(keys.KeyFormatError, match="unknown key scheme"):
        keys.encrypt_key_under_lmk(keys.Lmk.test(), bytes(16), "002", "Q")


# --- TR-31 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "kbpk_length"), [("A", 16), ("B", 16), ("B", 24), ("C", 24), ("D", 16), ("D", 32)]
)
def test_tr31_wrap_unwrap(version: str, kbpk_length: int) -> None:
    kbpk = bytes(range(kbpk_length))
    header = tr31.Tr31Header(version, "P0", "T", "E", optional_blocks=(("KS", "00604B120F9292"),))
    block = tr31.wrap_tr31(kbpk, header, KEY, masked_key_length=24)
    parsed, key = tr31.unwrap_tr31(kbpk, block)
    assert key == KEY
    assert parsed.optional_blocks[0] == ("KS", "00604B120F9292")
    assert int(block[1:5]) == len(block)
    tampered = block[:-1] + ("0" if block[-1] != "0" else "1")
    with pytest.raises(tr31.Tr31Error, match="MAC does not verify"):
        tr31.unwrap_tr31(kbpk, tampered)
    with pytest.raises(tr31.Tr31Error, match="MAC does not verify"):
        tr31.unwrap_tr31(bytes(kbpk_length), block)


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ("E0016P0TE00N0000", "unsupported key block version"),
        ("B0017P0TE00N0000", "header says 17"),
        ("B00X6P0TE00N0000", "not numeric"),
        ("B0016", "shorter than a header"),
    ],
)
def test_tr31_header_errors(block: str, reason: str) -> None:
    with pytest.raises(tr31.Tr31Error, match=reason):
        tr31.unwrap_tr31(bytes(16), block)


@pytest.mark.parametrize(
    "module_name", ["des", "pinblock", "pin", "cvv", "mac", "dukpt", "tr31", "keys", "hsm"]
)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(f"hsm_sim.{module_name}")
    assert doctest.testmod(module).failed == 0
