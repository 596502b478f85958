"""The internal request model: typed, validated views of decoded messages.

Flows see these frozen values, never raw field numbers. :func:`parse_request` raises
:class:`RequestError` carrying the response code to answer (``30`` format error, ``12`` invalid
transaction) and the field at fault.

Rules:

* Card data comes from field 35 (track 2) when present, else fields 2 + 14.
* Fields 7, 11 and 41 are required in every request: they identify it.
* Field 48 is TLV: tag 3 characters, length 3 digits, value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from switch.codec import Message

PROCESSING_PURCHASE = "000000"
PROCESSING_BALANCE = "310000"
PROCESSING_REFUND = "200000"
PROCESSING_RECONCILIATION = "920000"

NETWORK_SIGN_ON = "001"
NETWORK_SIGN_OFF = "002"
NETWORK_KEY_EXCHANGE = "101"
NETWORK_ECHO = "301"


class RequestError(ValueError):
    """A decoded message that is not a valid request; ``response_code`` says what to answer."""

    def __init__(self, reason: str, *, response_code: str = "30", field: int | None = None):
        super().__init__(reason if field is None else f"{reason} (field {field})")
        self.reason = reason
        self.response_code = response_code
        self.field = field


@dataclass(frozen=True, slots=True)
class CardData:
    """The card as presented: PAN and expiry (YYMM), and where they came from."""

    pan: str
    expiry: str | None
    source: str  # track2 | manual


@dataclass(frozen=True)
class Request:
    """Fields every request has, and the message it came from."""

    message: Message
    mti: str
    stan: str
    transmission: str
    tid: str

    @property
    def base_mti(self) -> str:
        """The MTI with the repeat digit cleared (``0201`` -> ``0200``)."""
        return self.mti[:3] + ("0" if self.mti[3] == "1" else self.mti[3])

    @property
    def repeat(self) -> bool:
        """True for a retransmission MTI (last digit 1)."""
        return self.mti[3] == "1"


@dataclass(frozen=True)
class NetworkRequest(Request):
    """An 0800: sign-on, sign-off, key exchange or echo."""

    code: str


@dataclass(frozen=True, slots=True)
class OriginalData:
    """Field 90: which earlier request a completion or reversal refers to."""

    mti: str
    stan: str
    transmission: str
    acquirer_id: str


@dataclass(frozen=True)
class FinancialRequest(Request):
    """A card or terminal request: purchase, balance, refund, pre-auth, completion, reversal,
    reconciliation (card data absent where the message kind does not need it)."""

    processing_code: str
    amount: int
    card: CardData | None
    merchant_id: str | None
    mcc: str | None
    acquirer_id: str | None
    entry_mode: str | None
    currency: str | None
    pin_block: bytes | None
    ksn: bytes | None
    rrn: str | None
    additional: Mapping[str, str] = field(default_factory=dict)
    original: OriginalData | None = None
    replacement_amount: int | None = None  # field 95: the actual amount


def parse_tlv(value: str) -> dict[str, str]:
    """Parse field 48 TLV (``P92003123`` -> ``{"P92": "123"}``); raises RequestError."""
    tags: dict[str, str] = {}
    position = 0
    while position < len(value):
        header = value[position : position + 6]
        if len(header) < 6 or not header[3:].isdigit():
            raise RequestError(f"bad TLV header at offset {position}", field=48)
        size = int(header[3:])
        data = value[position + 6 : position + 6 + size]
        if len(data) != size:
            raise RequestError(f"TLV {header[:3]} runs past the end", field=48)
        tags[header[:3]] = data
        position += 6 + size
    return tags


def build_tlv(tags: Mapping[str, str]) -> str:
    """Build field 48 TLV from tags (in the given order)."""
    return "".join(f"{tag}{len(value):03d}{value}" for tag, value in tags.items())


def parse_track2(track2: str) -> CardData:
    """PAN and expiry from track 2 (``PAN=YYMM...``, ``=`` or ``D`` separator)."""
    separator = "=" if "=" in track2 else "D"
    pan, found, rest = track2.partition(separator)
    if not found or len(rest) < 4 or not rest[:4].isdigit() or not pan.isdigit():
        raise RequestError("track 2 is not PAN=YYMM...", field=35)
    return CardData(pan=pan, expiry=rest[:4], source="track2")


def _required(message: Message, number: int) -> str:
    value = message.get(number)
    if value is None:
        raise RequestError("required field missing", field=number)
    return value


def parse_request(message: Message) -> Request:
    """Turn a decoded request message into a request value (or raise RequestError)."""
    stan = _required(message, 11)
    tid = _required(message, 41)
    transmission = _required(message, 7)
    kind = message.mti[:2]
    if kind == "08":
        return NetworkRequest(
            message=message,
            mti=message.mti,
            stan=stan,
            transmission=transmission,
            tid=tid,
            code=_required(message, 70),
        )
    if kind not in ("01", "02", "04", "05"):
        raise RequestError(f"MTI {message.mti} is not supported", response_code="12")
    processing_code = _required(message, 3)
    amount_text = message.get(4)
    if amount_text is None and kind in ("01", "02") and processing_code != PROCESSING_BALANCE:
        raise RequestError("required field missing", field=4)
    card = _card_data(message)
    if card is None and kind in ("01", "02") and message.mti[:3] != "022":
        raise RequestError("card data missing: give field 35 or field 2", field=2)
    additional = parse_tlv(message.get(48) or "")
    return FinancialRequest(
        message=message,
        mti=message.mti,
        stan=stan,
        transmission=transmission,
        tid=tid,
        processing_code=processing_code,
        amount=int(amount_text or "0"),
        card=card,
        merchant_id=message.get(42),
        mcc=message.get(18),
        acquirer_id=message.get(32),
        entry_mode=message.get(22),
        currency=message.get(49),
        pin_block=message.binary(52),
        ksn=message.binary(53),
        rrn=message.get(37),
        additional=additional,
        original=_original(message),
        replacement_amount=_replacement(message),
    )


def _card_data(message: Message) -> CardData | None:
    track2 = message.get(35)
    if track2 is not None:
        return parse_track2(track2)
    pan = message.get(2)
    if pan is None:
        return None
    return CardData(pan=pan, expiry=message.get(14), source="manual")


def _original(message: Message) -> OriginalData | None:
    value = message.get(90)
    if value is None:
        return None
    return OriginalData(
        mti=value[:4],
        stan=value[4:10],
        transmission=value[10:20],
        acquirer_id=value[20:31].lstrip("0"),
    )


def _replacement(message: Message) -> int | None:
    value = message.get(95)
    if value is None:
        return None
    if not value[:12].isdigit():
        raise RequestError("actual amount (first 12 characters) must be digits", field=95)
    return int(value[:12])


def original_data_field(mti: str, stan: str, transmission: str, acquirer_id: str) -> str:
    """Build field 90 (original MTI, STAN, field 7, acquirer id zero-padded to 11, 11 zeros)."""
    return f"{mti}{stan}{transmission}{acquirer_id.zfill(11)}{'0' * 11}"


def request_digest(message: Message) -> str:
    """A digest of a request's content, the same for a retransmission (MTI repeat digit and
    MAC ignored), different for any other change."""
    mti = message.mti[:3] + ("0" if message.mti[3] == "1" else message.mti[3])
    parts = [mti] + [f"{k}={v}" for k, v in sorted(message.fields.items()) if k not in (64, 128)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def luhn_valid(pan: str) -> bool:
    """True when ``pan`` is digits with a valid Luhn check digit.

    >>> luhn_valid("6362149173324546"), luhn_valid("6362149173324547")
    (True, False)
    """
    if not (12 <= len(pan) <= 19 and pan.isascii() and pan.isdigit()):
        return False
    backwards = pan[::-1]  # the check digit first; every second digit from it is doubled
    total = sum(map(int, backwards[0::2])) + sum(map(_LUHN_DOUBLED.__getitem__, backwards[1::2]))
    return total % 10 == 0


_LUHN_DOUBLED = {str(d): d * 2 - 9 if d > 4 else d * 2 for d in range(10)}
