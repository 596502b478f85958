"""Known-answer and error cases of the shetab87 codec, built by hand from pos-interface.md §2."""

from __future__ import annotations

import pytest

from switch.codec import (
    CodecError,
    Message,
    check_field,
    decode,
    decode_plain,
    encode,
    encode_plain,
)
from switch.dialects import get_dialect
from switch.dialects.shetab87 import SHETAB87

PAN = "6362149173324546"
NAME_LOCATION = "Honar Gallery".ljust(25) + "Tehran".ljust(13) + "IR"

PURCHASE_FIELDS = {
    2: PAN,
    3: "000000",
    4: "000000150000",
    7: "1204101502",
    11: "000123",
    12: "134502",
    13: "1204",
    14: "2812",
    18: "5999",
    22: "021",
    25: "14",
    37: "123456789012",
    41: "TERM0001",
    42: "MERCHANT0000001",
    43: NAME_LOCATION,
    49: "364",
    52: "0123456789ABCDEF",
    64: "1122334455667788",
}

# Bits by byte (field 1 = 0x80 of byte 1):
#   1-8   : 2 3 4 7        -> 0x40+0x20+0x10+0x02 = 72
#   9-16  : 11 12 13 14    -> 0x20+0x10+0x08+0x04 = 3C
#   17-24 : 18 22          -> 0x40+0x04           = 44
#   25-32 : 25             -> 0x80                = 80
#   33-40 : 37             -> 0x08                = 08
#   41-48 : 41 42 43       -> 0x80+0x40+0x20      = E0
#   49-56 : 49 52          -> 0x80+0x10           = 90
#   57-64 : 64             -> 0x01                = 01
PURCHASE_BITMAP = b"723C448008E09001"
PURCHASE_RAW = (
    b"0200"
    + PURCHASE_BITMAP
    + b"16"
    + PAN.encode()
    + b"000000"
    + b"000000150000"
    + b"1204101502"
    + b"000123"
    + b"134502"
    + b"1204"
    + b"2812"
    + b"5999"
    + b"021"
    + b"14"
    + b"123456789012"
    + b"TERM0001"
    + b"MERCHANT0000001"
    + NAME_LOCATION.encode()
    + b"364"
    + b"\x01\x23\x45\x67\x89\xab\xcd\xef"
    + b"\x11\x22\x33\x44\x55\x66\x77\x88"
)

# 0800 echo with a secondary bitmap: primary 1 7 11 41, secondary 70 128.
#   primary  : 1+7 -> 82, 11 -> 20, 41 -> 80 (byte 6)      = 8220000000800000
#   secondary: 70 -> 04 (byte 1), 128 -> 01 (byte 8)        = 0400000000000001
ECHO_FIELDS = {7: "1204101502", 11: "000124", 41: "TERM0001", 70: "301", 128: "A1B2C3D4E5F60718"}
ECHO_RAW = (
    b"0800"
    + b"8220000000800000"
    + b"0400000000000001"
    + b"1204101502"
    + b"000124"
    + b"TERM0001"
    + b"301"
    + b"\xa1\xb2\xc3\xd4\xe5\xf6\x07\x18"
)


def test_purchase_encodes_to_known_bytes() -> None:
    assert encode(Message("0200", PURCHASE_FIELDS), SHETAB87) == PURCHASE_RAW


def test_purchase_decodes_from_known_bytes() -> None:
    message = decode(PURCHASE_RAW, SHETAB87)
    assert message.mti == "0200"
    assert dict(message.fields) == PURCHASE_FIELDS
    assert message.binary(52) == bytes.fromhex("0123456789ABCDEF")


def test_field_order_in_the_mapping_does_not_change_the_bytes() -> None:
    shuffled = dict(reversed(list(PURCHASE_FIELDS.items())))
    assert encode(Message("0200", shuffled), SHETAB87) == PURCHASE_RAW


def test_pin_block_is_eight_raw_bytes_on_the_wire() -> None:
    raw = encode(Message("0200", {11: "000001", 52: "00FF10A0B0C0D0E0"}), SHETAB87)
    assert raw == b"0200" + b"0020000000001000" + b"000001" + bytes.fromhex("00FF10A0B0C0D0E0")


def test_echo_with_secondary_bitmap_encodes_to_known_bytes() -> None:
    assert encode(Message("0800", ECHO_FIELDS), SHETAB87) == ECHO_RAW
    assert dict(decode(ECHO_RAW, SHETAB87).fields) == ECHO_FIELDS


def test_secondary_bitmap_only_when_a_field_above_64_is_present() -> None:
    without = encode(Message("0800", {7: "1204101502", 11: "000124"}), SHETAB87)
    assert without == b"0800" + b"0220000000000000" + b"1204101502" + b"000124"
    with_70 = encode(Message("0800", {7: "1204101502", 11: "000124", 70: "001"}), SHETAB87)
    assert with_70 == (
        b"0800" + b"8220000000000000" + b"0400000000000000" + b"1204101502" + b"000124" + b"001"
    )


@pytest.mark.parametrize(
    ("number", "value", "wire"),
    [
        (2, "4111111111111", b"134111111111111"),  # LLVAR, 2 digits of length
        (2, "", b"00"),  # an empty LLVAR field is still announced
        (32, "636214", b"06636214"),
        (35, "6362149173324546=2812101", b"246362149173324546=2812101"),
        (48, "P92003123", b"009P92003123"),  # LLLVAR, 3 digits
        (53, "FFFF9876543210E00001", b"10" + bytes.fromhex("FFFF9876543210E00001")),
        (54, "", b"000"),
    ],
)
def test_variable_field_length_prefixes(number: int, value: str, wire: bytes) -> None:
    raw = encode(Message("0200", {number: value}), SHETAB87)
    assert raw.endswith(wire)
    assert len(raw) == 4 + 16 + len(wire)
    assert dict(decode(raw, SHETAB87).fields) == {number: value}


def test_get_dialect_knows_shetab87_and_names_the_known_ones() -> None:
    assert get_dialect("shetab87") is SHETAB87
    with pytest.raises(ValueError, match="shetab87"):
        get_dialect("iso93")


# --- decoding errors -------------------------------------------------------------------------


def test_field_not_in_dialect_is_named_with_mti_and_bitmap_salvaged() -> None:
    # Bits 6 and 11: 0x04 in byte 1, 0x20 in byte 2. Field 6 is not in shetab87.
    raw = b"0200" + b"0420000000000000" + b"000000150000" + b"000123"
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    error = caught.value
    assert error.field == "6"
    assert "field 6" in str(error)
    assert "not defined" in error.reason
    assert error.partial["t"] == "0200"
    assert error.partial["p"] == "0420000000000000"
    assert error.pos == 20


def test_non_digit_in_numeric_field_names_that_field_and_its_position() -> None:
    raw = PURCHASE_RAW.replace(b"000123", b"00012A", 1)
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "11"
    assert caught.value.pos == raw.index(b"00012A")
    assert caught.value.partial["t"] == "0200"
    assert "format n" in caught.value.reason


def test_non_digit_llvar_length_names_the_field() -> None:
    raw = PURCHASE_RAW.replace(b"16" + PAN.encode(), b"1X" + PAN.encode(), 1)
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "2"
    assert caught.value.pos == 20


def test_llvar_length_over_the_dialect_maximum_names_the_field() -> None:
    raw = b"0200" + b"4000000000000000" + b"20" + b"1" * 20
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "2"


def test_non_track2_character_in_field_35() -> None:
    raw = encode(Message("0200", {35: "6362149173324546=2812"}), SHETAB87).replace(b"=", b"^")
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "35"


def test_control_character_in_ans_field() -> None:
    raw = PURCHASE_RAW.replace(b"TERM0001", b"TERM\t001", 1)
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "41"


def test_non_ascii_byte_in_text_field() -> None:
    raw = PURCHASE_RAW.replace(b"Honar", b"Hon\xe4r", 1)
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "43"


@pytest.mark.parametrize(
    ("cut_before", "field"),
    [
        (b"TERM0001", "41"),  # nothing of field 41 left
        (b"M0001MERCHANT", "41"),  # half of field 41
        (b"\x11\x22\x33\x44", "64"),  # the MAC is missing
        (b"16" + PAN.encode(), "2"),  # the LLVAR prefix is missing
        (b"6" + PAN.encode(), "2"),  # half the LLVAR prefix
    ],
)
def test_truncated_message_names_the_field(cut_before: bytes, field: str) -> None:
    raw = PURCHASE_RAW[: PURCHASE_RAW.index(cut_before)]
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == field
    assert caught.value.partial["t"] == "0200"


def test_truncated_mti_and_bitmap() -> None:
    with pytest.raises(CodecError) as caught:
        decode(b"02", SHETAB87)
    assert caught.value.field == "t"
    with pytest.raises(CodecError) as caught:
        decode(b"0200723C", SHETAB87)
    assert caught.value.field == "p"
    assert caught.value.partial["t"] == "0200"


def test_empty_message() -> None:
    with pytest.raises(CodecError) as caught:
        decode(b"", SHETAB87)
    assert caught.value.field == "t"


def test_trailing_bytes_are_an_error() -> None:
    with pytest.raises(CodecError) as caught:
        decode(PURCHASE_RAW + b"X", SHETAB87)
    assert "extra data" in caught.value.reason.lower()
    assert caught.value.pos == len(PURCHASE_RAW)
    assert caught.value.partial["41"] == "TERM0001"


def test_lowercase_primary_bitmap_rejected() -> None:
    raw = PURCHASE_RAW.replace(PURCHASE_BITMAP, PURCHASE_BITMAP.lower(), 1)
    assert raw != PURCHASE_RAW
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "p"
    assert "uppercase" in caught.value.reason


def test_lowercase_or_non_hex_secondary_bitmap_rejected() -> None:
    # No shetab87 field above 64 puts a letter in the secondary bitmap, so a lowercase letter
    # there always announces an undefined field too; either way decoding must fail.
    lowercase = ECHO_RAW.replace(b"0400000000000001", b"040000000000000a", 1)
    with pytest.raises(CodecError) as caught:
        decode(lowercase, SHETAB87)
    assert caught.value.partial["t"] == "0800"
    non_hex = ECHO_RAW.replace(b"0400000000000001", b"04000000000000G1", 1)
    with pytest.raises(CodecError) as caught:
        decode(non_hex, SHETAB87)
    assert caught.value.field == "1"


def test_non_hex_bitmap_rejected() -> None:
    raw = b"0200" + b"0020000000000G00" + b"000123"
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "p"


def test_non_digit_mti_rejected() -> None:
    raw = b"02A0" + PURCHASE_RAW[4:]
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "t"


def test_codec_error_is_a_value_error_with_format_error_hint() -> None:
    error = CodecError("bad", field="11", pos=7, partial={"t": "0200"})
    assert isinstance(error, ValueError)
    assert str(error) == "bad (field 11, pos 7)"
    assert error.response_code_hint == "30"
    assert str(CodecError("bad")) == "bad"


def test_tertiary_bitmap_with_field_129_is_a_codec_error() -> None:
    raw = b"0200" + b"8000000000000000" + b"8000000000000000" + b"8000000000000000"
    with pytest.raises(CodecError):
        decode(raw, SHETAB87)


def test_bit_65_is_a_codec_error_naming_field_65() -> None:
    raw = b"0200" + b"8000000000000000" + b"8000000000000000" + b"0000000000000000"
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "65"


def test_error_position_points_at_the_bad_field_not_an_earlier_copy() -> None:
    pin_block = b"003\x01\x02\x03xx"
    raw = encode(Message("0200", {52: pin_block.hex().upper(), 54: "abc"}), SHETAB87)
    raw = raw[:-3] + b"\x01\x02\x03"  # field 54 now holds control characters
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "54"
    assert caught.value.pos == len(raw) - 6


# --- encoding errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mti", "fields", "field"),
    [
        ("0200", {6: "000000150000"}, "6"),  # not in the dialect
        ("0200", {1: "0000000000000000"}, "1"),  # the bitmap is not data
        ("0200", {65: "0000000000000000"}, "65"),
        ("0200", {11: "00012A"}, "11"),  # n with a letter
        ("0200", {11: "12345"}, "11"),  # fixed, too short
        ("0200", {11: "1234567"}, "11"),  # fixed, too long
        ("0200", {2: "1" * 20}, "2"),  # LLVAR over 19
        ("0200", {37: "ABC-12345678"}, "37"),  # an with punctuation
        ("0200", {43: "tab\t".ljust(40)}, "43"),  # ans with a tab
        ("0200", {43: "caf\u00e9".ljust(40)}, "43"),  # ans is ASCII only
        ("0200", {35: "6362149173324546^2812"}, "35"),
        ("0200", {52: "0123456789abcdef"}, "52"),  # binary must be uppercase hex
        ("0200", {52: "0123456789ABCD"}, "52"),  # 7 bytes
        ("0200", {53: "ABC"}, "53"),  # odd number of hex digits
        ("0200", {53: "00" * 49}, "53"),  # over 48 bytes
        ("020", {}, "t"),
        ("02A0", {}, "t"),
    ],
)
def test_encode_rejects_invalid_values(mti: str, fields: dict[int, str], field: str) -> None:
    with pytest.raises(CodecError) as caught:
        encode(Message(mti, fields), SHETAB87)
    assert caught.value.field == field
    assert caught.value.reason


@pytest.mark.parametrize(
    ("number", "value", "ok"),
    [
        (4, "000000000001", True),
        (4, "1", False),
        (37, "ABC 12345678", True),
        (41, "T-01 /#~", True),
        (41, "T-01 /#\x7f", False),
        (35, "6362149173324546D28121", True),
        (48, "", True),
        (48, "x" * 999, True),
        (48, "x" * 1000, False),
        (128, "00" * 8, True),
        (128, "00" * 9, False),
    ],
)
def test_check_field(number: int, value: str, ok: bool) -> None:
    problem = check_field(SHETAB87.by_number[number], value)
    assert (problem is None) == ok


def test_empty_secondary_bitmap_rejected() -> None:
    raw = b"0200" + b"A000000000000000" + b"0000000000000000" + b"000000"
    with pytest.raises(CodecError) as caught:
        decode(raw, SHETAB87)
    assert caught.value.field == "1"


def test_plain_pyiso8583_round_trip_matches_the_codec() -> None:
    """decode_plain / encode_plain (pyiso8583 alone, for codec comparisons) read and write the
    same bytes as the switch's codec, with pyiso8583's string keys."""
    plain = decode_plain(PURCHASE_RAW, SHETAB87)
    assert plain["t"] == "0200"
    assert {key: plain[str(key)] for key in PURCHASE_FIELDS} == PURCHASE_FIELDS
    assert encode_plain(plain, SHETAB87) == PURCHASE_RAW
    without_bitmap = {key: value for key, value in plain.items() if key != "p"}
    assert encode_plain(without_bitmap, SHETAB87) == PURCHASE_RAW
    assert "p" not in without_bitmap  # pyiso8583 writes the bitmap into a copy, not into it
    with pytest.raises(ValueError, match="field 2 pos 22"):
        decode_plain(PURCHASE_RAW[:22], SHETAB87)
