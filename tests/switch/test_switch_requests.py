"""The request model (parse_request, TLV, Luhn, digests), business dates, and log masking."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.calendar import BusinessCalendar
from switch.codec import Message
from switch.logs import JsonFormatter, mask_pans
from switch.requests import (
    CardData,
    FinancialRequest,
    NetworkRequest,
    RequestError,
    build_tlv,
    luhn_valid,
    parse_request,
    parse_tlv,
    parse_track2,
    request_digest,
)

PAN = "6362149173324546"
OTHER_PAN = "6037991236718544"

IDENTIFIERS = {7: "1204101502", 11: "000123", 41: "TERM0001"}
PURCHASE = {
    **IDENTIFIERS,
    3: "000000",
    4: "000000150000",
    18: "5999",
    22: "021",
    32: "636214",
    37: "123456789012",
    42: "MERCHANT0000001",
    49: "364",
    52: "0123456789ABCDEF",
    64: "1122334455667788",
}


# --- parse_request ---------------------------------------------------------------------------


def test_purchase_with_track2() -> None:
    fields = {**PURCHASE, 35: f"{PAN}=28121010000000000"}
    request = parse_request(Message("0200", fields))
    assert isinstance(request, FinancialRequest)
    assert request.card == CardData(pan=PAN, expiry="2812", source="track2")
    assert (request.stan, request.tid, request.transmission) == ("000123", "TERM0001", "1204101502")
    assert request.amount == 150000
    assert request.processing_code == "000000"
    assert request.pin_block == bytes.fromhex("0123456789ABCDEF")
    assert request.ksn is None
    assert (request.merchant_id, request.mcc, request.acquirer_id) == (
        "MERCHANT0000001",
        "5999",
        "636214",
    )
    assert (request.entry_mode, request.currency, request.rrn) == ("021", "364", "123456789012")
    assert request.additional == {}


def test_purchase_with_pan_and_expiry() -> None:
    request = parse_request(Message("0200", {**PURCHASE, 2: PAN, 14: "2812", 22: "012"}))
    assert isinstance(request, FinancialRequest)
    assert request.card == CardData(pan=PAN, expiry="2812", source="manual")


def test_track2_wins_over_fields_2_and_14() -> None:
    fields = {**PURCHASE, 2: OTHER_PAN, 14: "2001", 35: f"{PAN}D2812101"}
    request = parse_request(Message("0200", fields))
    assert isinstance(request, FinancialRequest)
    assert request.card == CardData(pan=PAN, expiry="2812", source="track2")


def test_no_card_data_names_field_2() -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(Message("0200", PURCHASE))
    assert caught.value.field == 2
    assert caught.value.response_code == "30"


@pytest.mark.parametrize("track2", [PAN, f"{PAN}=28", f"{PAN}=28AB", f"=2812{PAN}", "63621D="])
def test_bad_track2_names_field_35(track2: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_track2(track2)
    assert caught.value.field == 35
    assert caught.value.response_code == "30"


@pytest.mark.parametrize("missing", [11, 41, 7])
def test_missing_identifying_field(missing: int) -> None:
    fields = {k: v for k, v in {**PURCHASE, 2: PAN}.items() if k != missing}
    with pytest.raises(RequestError) as caught:
        parse_request(Message("0200", fields))
    assert caught.value.field == missing
    assert caught.value.response_code == "30"
    assert f"field {missing}" in str(caught.value)


@pytest.mark.parametrize("missing", [11, 41, 7])
def test_missing_identifying_field_in_network_request(missing: int) -> None:
    fields = {k: v for k, v in {**IDENTIFIERS, 70: "301"}.items() if k != missing}
    with pytest.raises(RequestError) as caught:
        parse_request(Message("0800", fields))
    assert caught.value.field == missing


def test_missing_processing_code_and_amount() -> None:
    base = {**PURCHASE, 2: PAN}
    with pytest.raises(RequestError) as caught:
        parse_request(Message("0200", {k: v for k, v in base.items() if k != 3}))
    assert caught.value.field == 3
    with pytest.raises(RequestError) as caught:
        parse_request(Message("0200", {k: v for k, v in base.items() if k != 4}))
    assert caught.value.field == 4


def test_balance_inquiry_needs_no_amount() -> None:
    fields = {k: v for k, v in {**PURCHASE, 2: PAN, 3: "310000"}.items() if k != 4}
    request = parse_request(Message("0200", fields))
    assert isinstance(request, FinancialRequest)
    assert request.amount == 0


def test_network_request() -> None:
    request = parse_request(Message("0800", {**IDENTIFIERS, 70: "101"}))
    assert isinstance(request, NetworkRequest)
    assert request.code == "101"
    with pytest.raises(RequestError) as caught:
        parse_request(Message("0800", IDENTIFIERS))
    assert caught.value.field == 70


@pytest.mark.parametrize("mti", ["0300", "0600", "9200"])
def test_unsupported_mti_is_invalid_transaction(mti: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(Message(mti, {**PURCHASE, 2: PAN}))
    assert caught.value.response_code == "12"


@pytest.mark.parametrize(
    ("mti", "base", "repeat"),
    [("0200", "0200", False), ("0201", "0200", True), ("0101", "0100", True)],
)
def test_repeat_and_base_mti(mti: str, base: str, repeat: bool) -> None:
    request = parse_request(Message(mti, {**PURCHASE, 2: PAN}))
    assert request.base_mti == base
    assert request.repeat is repeat


def test_field_48_and_53_reach_the_request() -> None:
    fields = {**PURCHASE, 2: PAN, 48: "P92003123LNG00201", 53: "FFFF9876543210E00001"}
    request = parse_request(Message("0200", fields))
    assert isinstance(request, FinancialRequest)
    assert request.additional == {"P92": "123", "LNG": "01"}
    assert request.ksn == bytes.fromhex("FFFF9876543210E00001")


def test_bad_tlv_in_request_names_field_48() -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(Message("0200", {**PURCHASE, 2: PAN, 48: "P92009123"}))
    assert caught.value.field == 48


# --- TLV -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("", {}),
        ("P92003123", {"P92": "123"}),
        ("P92003123LNG00201", {"P92": "123", "LNG": "01"}),
        ("ORN012123456789012", {"ORN": "123456789012"}),
        ("XYZ000", {"XYZ": ""}),
        ("DSC005a b=cPRS005GN,TR", {"DSC": "a b=c", "PRS": "GN,TR"}),
    ],
)
def test_tlv_good(text: str, tags: dict[str, str]) -> None:
    assert parse_tlv(text) == tags
    assert build_tlv(tags) == text


@pytest.mark.parametrize(
    "text",
    [
        "P92004123",  # value shorter than its length
        "P92003123LNG005",  # second value missing
        "P92003123LNG00501",
    ],
)
def test_tlv_truncated(text: str) -> None:
    with pytest.raises(RequestError, match="runs past the end") as caught:
        parse_tlv(text)
    assert caught.value.field == 48


@pytest.mark.parametrize("text", ["P9", "P9200", "P92AB3123", "P92 03123", "P92003123X"])
def test_tlv_bad_header(text: str) -> None:
    with pytest.raises(RequestError, match="bad TLV header") as caught:
        parse_tlv(text)
    assert caught.value.field == 48


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=3, max_size=3),
        st.text(alphabet="".join(chr(c) for c in range(32, 127)), max_size=40),
        max_size=6,
    )
)
def test_tlv_round_trip(tags: dict[str, str]) -> None:
    assert parse_tlv(build_tlv(tags)) == tags


# --- Luhn ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pan", "valid"),
    [
        (PAN, True),
        ("6362149173324547", False),
        # Public Iranian samples verified in reference/shetab-settlement-mqtt.md §1.7.
        ("5894631159226349", True),
        ("6037991236718544", True),
        ("6221061106498670", True),
        ("6362141075165358", True),
        ("6221061106498671", False),
        ("4111111111111111", True),
        ("378282246310005", True),  # 15 digits
        ("000000000000", True),  # 12 digits, the shortest accepted
        ("79927398713", False),  # valid check digit, but 11 digits is too short
        ("1" * 18 + "3", True),  # 19 digits: 9 doubled ones + 9 ones + 3
        ("00000000000000000000", False),  # 20 digits
        ("", False),
        ("6362-1491-7332-4546", False),
        ("636214917332454a", False),
        (" 6362149173324546", False),
    ],
)
def test_luhn_valid(pan: str, valid: bool) -> None:
    assert luhn_valid(pan) is valid


def test_luhn_catches_every_single_digit_error() -> None:
    for index in range(len(PAN)):
        for digit in "0123456789":
            if digit != PAN[index]:
                assert not luhn_valid(PAN[:index] + digit + PAN[index + 1 :])


@given(st.text(alphabet="0123456789", min_size=12, max_size=19))
def test_luhn_agrees_with_the_textbook_sum(pan: str) -> None:
    total = 0
    for position, digit in enumerate(reversed(pan)):
        doubled = int(digit) * (2 if position % 2 else 1)
        total += doubled // 10 + doubled % 10  # the digits of the doubled value
    assert luhn_valid(pan) is (total % 10 == 0)


@pytest.mark.parametrize("digits", ["\u0666", "\u06f6", "\u00b2"])  # Arabic, Persian 6; ²
def test_luhn_refuses_digits_other_than_ascii(digits: str) -> None:
    assert luhn_valid("636214917332454" + digits) is False


# --- request_digest --------------------------------------------------------------------------

DIGEST_FIELDS = {**PURCHASE, 2: PAN, 14: "2812", 48: "LNG00200"}


def test_digest_equal_for_retransmission() -> None:
    original = Message("0200", DIGEST_FIELDS)
    repeat = Message("0201", DIGEST_FIELDS)
    assert request_digest(original) == request_digest(repeat)
    assert request_digest(Message("0400", DIGEST_FIELDS)) == request_digest(
        Message("0401", DIGEST_FIELDS)
    )


def test_digest_ignores_mac_fields_and_field_order() -> None:
    original = Message("0200", DIGEST_FIELDS)
    new_mac = Message("0200", {**DIGEST_FIELDS, 64: "FFFFFFFFFFFFFFFF"})
    no_mac = Message("0200", {k: v for k, v in DIGEST_FIELDS.items() if k != 64})
    mac_128 = Message("0200", {**no_mac.fields, 128: "0000000000000000"})
    shuffled = Message("0200", dict(reversed(list(DIGEST_FIELDS.items()))))
    assert len({request_digest(m) for m in (original, new_mac, no_mac, mac_128, shuffled)}) == 1


@pytest.mark.parametrize("number", sorted(k for k in DIGEST_FIELDS if k != 64))
def test_digest_changes_when_any_field_changes(number: int) -> None:
    original = Message("0200", DIGEST_FIELDS)
    value = DIGEST_FIELDS[number]
    changed_value = value[:-1] + ("1" if value[-1] != "1" else "2")
    changed = Message("0200", {**DIGEST_FIELDS, number: changed_value})
    removed = Message("0200", {k: v for k, v in DIGEST_FIELDS.items() if k != number})
    assert request_digest(changed) != request_digest(original)
    assert request_digest(removed) != request_digest(original)


@pytest.mark.parametrize("mti", ["0100", "0210", "0220", "0202", "1200"])
def test_digest_changes_with_the_mti(mti: str) -> None:
    assert request_digest(Message(mti, DIGEST_FIELDS)) != request_digest(
        Message("0200", DIGEST_FIELDS)
    )


def test_digest_changes_when_a_field_is_added_or_moves() -> None:
    original = Message("0200", DIGEST_FIELDS)
    added = Message("0200", {**DIGEST_FIELDS, 12: "101502"})
    # The same value under another field number is a different request.
    moved = Message("0200", {**{k: v for k, v in DIGEST_FIELDS.items() if k != 13}, 15: "1204"})
    with_13 = Message("0200", {**DIGEST_FIELDS, 13: "1204"})
    assert len({request_digest(m) for m in (original, added, moved, with_13)}) == 4


# --- BusinessCalendar ------------------------------------------------------------------------
# Asia/Tehran is UTC+03:30 since 2022 (no DST); in June 2021 it was UTC+04:30.


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cutover", "instant", "business_date"),
    [
        # Midnight cutover: the Tehran calendar date, not the UTC one.
        ("00:00", utc(2026, 12, 4, 20, 29, 59), "2026-12-04"),  # 23:59:59 Tehran
        ("00:00", utc(2026, 12, 4, 20, 30), "2026-12-05"),  # 00:00 Tehran, still Dec 4 in UTC
        # 02:00 cutover: the hours after Tehran midnight still count in the day before.
        ("02:00", utc(2026, 12, 4, 20, 30), "2026-12-04"),  # 00:00 Tehran
        ("02:00", utc(2026, 12, 4, 22, 29, 59), "2026-12-04"),  # 01:59:59 Tehran
        ("02:00", utc(2026, 12, 4, 22, 30), "2026-12-05"),  # 02:00 Tehran
        ("00:30", utc(2026, 12, 4, 20, 59), "2026-12-04"),  # 00:29 Tehran
        ("00:30", utc(2026, 12, 4, 21, 0), "2026-12-05"),  # 00:30 Tehran
        # Year end.
        ("02:00", utc(2026, 12, 31, 22, 0), "2026-12-31"),  # 01:30 Tehran, Jan 1
        ("02:00", utc(2026, 12, 31, 22, 30), "2027-01-01"),
        # 2021 summer time: UTC+04:30.
        ("00:00", utc(2021, 6, 1, 19, 29), "2021-06-01"),
        ("00:00", utc(2021, 6, 1, 19, 30), "2021-06-02"),
    ],
)
def test_business_date_around_tehran_midnight(
    cutover: str, instant: datetime, business_date: str
) -> None:
    calendar = BusinessCalendar("Asia/Tehran", cutover)
    assert calendar.business_date(instant).isoformat() == business_date
    # The same instant in another zone is the same business date.
    elsewhere = instant.astimezone(timezone(timedelta(hours=-7)))
    assert calendar.business_date(elsewhere).isoformat() == business_date


def test_business_date_needs_an_aware_datetime() -> None:
    with pytest.raises(AssertionError):
        BusinessCalendar("Asia/Tehran", "00:00").business_date(datetime(2026, 12, 4, 12, 0))


# --- logs ------------------------------------------------------------------------------------

PAN_SHAPED = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"card {PAN} ok", "card 636214******4546 ok"),
        (f"{PAN}=28121010000000000", "636214******4546=281210*******0000"),
        ("6362149173324", "636214***3324"),  # 13 digits
        ("6362149173324546123", "636214*********6123"),  # 19 digits
        ("636214917332", "636214917332"),  # 12 digits: a STAN+time, not a PAN
        ("63621491733245461234", "63621491733245461234"),  # 20 digits
        ("stan 000123 amount 000000150000", "stan 000123 amount 000000150000"),
    ],
)
def test_mask_pans(text: str, masked: str) -> None:
    assert mask_pans(text) == masked


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 =D*-a", max_size=80))
def test_mask_pans_leaves_no_pan_shaped_run(text: str) -> None:
    assert PAN_SHAPED.search(mask_pans(text)) is None


def format_record(message: str, *args: object, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("honar.switch", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(record, name, value)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert PAN_SHAPED.search(line) is None
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_json_formatter_masks_message_arguments_and_fields() -> None:
    entry = format_record("declined card %s", PAN, tid="TERM0001", note=f"pan {PAN}", amount=150000)
    assert entry["msg"] == "declined card 636214******4546"
    assert entry["note"] == "pan 636214******4546"
    assert entry["tid"] == "TERM0001"
    assert entry["amount"] == 150000
    assert entry["level"] == "info"
    assert entry["logger"] == "honar.switch"


@pytest.mark.parametrize(
    "name",
    [
        "pin_block",
        "PIN",
        "tak",
        "tpk_kcv",
        "tmk",
        "bdk",
        "lmk_id",
        "track2",
        "cvv2",
        "key_under_tmk",
    ],
)
def test_json_formatter_drops_secret_fields(name: str) -> None:
    entry = format_record("key exchange", tid="TERM0001", **{name: "0123456789ABCDEF"})
    assert name not in entry
    assert "0123456789ABCDEF" not in json.dumps(entry)
    assert entry["tid"] == "TERM0001"


def test_json_formatter_masks_exceptions() -> None:
    try:
        raise ValueError(f"bad card {PAN}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("honar.switch", logging.ERROR, __file__, 1, "failed", (), exc_info)
    line = JsonFormatter().format(record)
    assert PAN not in line
    assert "636214******4546" in json.loads(line)["exc"]


def test_json_formatter_through_a_logger() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("honar.test_switch_requests")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("card %s", PAN, extra={"pin_block": "0412AC89", "pan": PAN})
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert PAN not in output
    assert "0412AC89" not in output
    assert json.loads(output)["pan"] == "636214******4546"


def test_json_formatter_masks_pans_in_nested_values() -> None:
    record = logging.LogRecord("honar.switch", logging.INFO, __file__, 1, "request", (), None)
    record.card = {"number": PAN}
    record.pans = [OTHER_PAN]
    record.request = Message("0200", {2: PAN})
    line = JsonFormatter().format(record)
    assert PAN not in line
    assert OTHER_PAN not in line


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        ("2026-12-04T17:29:00", "2026-12-04"),  # 20:59 Tehran: before a 21:00 cutover
        ("2026-12-04T17:30:00", "2026-12-05"),  # 21:00 Tehran: the next business date opens
        ("2026-12-04T20:29:00", "2026-12-05"),  # 23:59 Tehran
        ("2026-12-04T20:31:00", "2026-12-05"),  # 00:01 Tehran on the 5th
    ],
)
def test_evening_cutover_opens_the_next_business_date(utc: str, expected: str) -> None:
    from datetime import UTC as _UTC
    from datetime import datetime as _datetime

    calendar = BusinessCalendar("Asia/Tehran", "21:00")
    now = _datetime.fromisoformat(utc).replace(tzinfo=_UTC)
    assert calendar.business_date(now).isoformat() == expected
