"""The ``shetab93`` dialect: the Shetab 7 profile on ISO 8583:1993 (1xxx MTIs, action codes).

The flows speak the canonical shape (``shetab87``); this module is the translation, as tables
plus a few field converters. What differs from shetab87 on the wire:

=============  ===========================  ============================================
shetab87       shetab93                     conversion
=============  ===========================  ============================================
MTI 0xyz       MTI 1xyz (table below)       0800 <-> 1804, 0500 <-> 1520
12 hhmmss      12 n12 YYMMDDhhmmss          13 (MMDD) folds into 12
13 MMDD        (absent)
15 MMDD        15 n6 YYMMDD
18 MCC         26 n4 card acceptor business code
22 n3          22 an12 POS data code        entry mode in positions 7-9, zeros elsewhere
25 n2          (absent)
39 an2         39 an3 action code           table ACTION_CODES
43 ans40       43 ans..99 LLVAR             trailing spaces trimmed / padded back
70 n3          24 n3 function code          001/002/101/301 <-> 801/802/811/831
90 n42         56 n..35 LLVAR               MTI 4, STAN 6, YYMMDDhhmmss 12, acquirer LL+id
95 an42        30 n24                       original amount 12 + actual amount 12
=============  ===========================  ============================================

The 4-ASCII-digit length framing is the same; the 57-byte Shetab 7 routing header of the
public samples is not used between terminals and this switch.
"""

from __future__ import annotations

from switch.dialects.base import Dialect, FieldSpec, Framing
from switch.message import Message

# fmt: off
FIELDS = (
    #         no   name                                  format  prefix  max
    FieldSpec(2,   "PAN",                                "n",    2,      19),
    FieldSpec(3,   "processing code",                    "n",    0,      6),
    FieldSpec(4,   "amount, transaction",                "n",    0,      12),
    FieldSpec(7,   "transmission date & time",           "n",    0,      10),
    FieldSpec(11,  "STAN",                               "n",    0,      6),
    FieldSpec(12,  "local date & time YYMMDDhhmmss",     "n",    0,      12),
    FieldSpec(14,  "expiry date",                        "n",    0,      4),
    FieldSpec(15,  "settlement date YYMMDD",             "n",    0,      6),
    FieldSpec(22,  "POS data code",                      "an",   0,      12),
    FieldSpec(24,  "function code",                      "n",    0,      3),
    FieldSpec(26,  "card acceptor business code",        "n",    0,      4),
    FieldSpec(30,  "original amounts",                   "n",    0,      24),
    FieldSpec(32,  "acquiring institution id",           "n",    2,      11),
    FieldSpec(35,  "track 2",                            "z",    2,      37),
    FieldSpec(37,  "retrieval reference number",         "an",   0,      12),
    FieldSpec(38,  "approval code",                      "an",   0,      6),
    FieldSpec(39,  "action code",                        "n",    0,      3),
    FieldSpec(41,  "terminal id",                        "ans",  0,      8),
    FieldSpec(42,  "card acceptor id",                   "ans",  0,      15),
    FieldSpec(43,  "card acceptor name/location",        "ans",  2,      99),
    FieldSpec(48,  "additional data, private",           "ans",  3,      999),
    FieldSpec(49,  "currency code",                      "n",    0,      3),
    FieldSpec(52,  "PIN block",                          "b",    0,      8),
    FieldSpec(53,  "security control (KSN)",             "b",    2,      48),
    FieldSpec(54,  "additional amounts",                 "ans",  3,      120),
    FieldSpec(56,  "original data elements",             "n",    2,      35),
    FieldSpec(64,  "MAC",                                "b",    0,      8),
    FieldSpec(74,  "credits, number",                    "n",    0,      10),
    FieldSpec(76,  "debits, number",                     "n",    0,      10),
    FieldSpec(86,  "credits, amount",                    "n",    0,      16),
    FieldSpec(88,  "debits, amount",                     "n",    0,      16),
    FieldSpec(128, "MAC (secondary)",                    "b",    0,      8),
)

# canonical (shetab87) MTI -> shetab93 MTI; repeats keep their last digit
MTIS = {
    "0100": "1100", "0110": "1110", "0200": "1200", "0201": "1201", "0210": "1210",
    "0220": "1220", "0221": "1221", "0230": "1230", "0400": "1400", "0401": "1401",
    "0410": "1410", "0420": "1420", "0421": "1421", "0430": "1430", "0500": "1520",
    "0501": "1521", "0510": "1530", "0800": "1804", "0801": "1805", "0810": "1814",
}
CANONICAL_MTIS = {wire: canonical for canonical, wire in MTIS.items()}

RESPONSE_MTI = {
    "1100": "1110", "1200": "1210", "1201": "1210", "1220": "1230", "1221": "1230",
    "1400": "1410", "1401": "1410", "1420": "1430", "1421": "1430", "1520": "1530",
    "1521": "1530", "1804": "1814", "1805": "1814",
}

# shetab87 response code -> ISO 8583:1993 action code
ACTION_CODES = {
    "00": "000", "03": "109", "05": "100", "12": "902", "13": "110", "14": "111",
    "25": "914", "30": "904", "51": "116", "54": "101", "55": "117", "57": "119",
    "58": "120", "61": "121", "62": "104", "63": "916", "65": "123", "75": "106",
    "91": "907", "94": "913", "95": "501", "96": "909",
}
RESPONSE_CODES = {action: code for code, action in ACTION_CODES.items()}

# field 70 network management code <-> field 24 function code
FUNCTION_CODES = {"001": "801", "002": "802", "101": "811", "301": "831"}
NETWORK_CODES = {function: code for code, function in FUNCTION_CODES.items()}

SAME = (2, 3, 4, 7, 11, 14, 32, 35, 37, 38, 41, 42, 48, 49, 52, 53, 54, 64, 74, 76, 86, 88,
        128)

ECHO_FIELDS = (2, 3, 4, 7, 11, 12, 32, 37, 41, 42, 49, 56)
# fmt: on


class TranslationError(ValueError):
    """A shetab93 message that has no canonical equivalent (answered as a format error)."""


def to_canonical(message: Message) -> Message:
    """The canonical (shetab87-shaped) view of a shetab93 message."""
    mti = CANONICAL_MTIS.get(message.mti)
    if mti is None:
        raise TranslationError(f"MTI {message.mti} is not part of shetab93")
    wire = message.fields
    out = {n: wire[n] for n in SAME if n in wire}
    if 12 in wire:
        out[12], out[13] = wire[12][6:12], wire[12][2:6]
    if 15 in wire:
        out[15] = wire[15][2:6]
    if 22 in wire:
        out[22] = wire[22][6:9]
    if 26 in wire:
        out[18] = wire[26]
    if 39 in wire:
        out[39] = RESPONSE_CODES.get(wire[39], "96")
    if 43 in wire:
        out[43] = wire[43][:40].ljust(40)
    if 24 in wire:
        if wire[24] not in NETWORK_CODES:
            raise TranslationError(f"function code {wire[24]} is not supported (field 24)")
        out[70] = NETWORK_CODES[wire[24]]
    if 56 in wire:
        value = wire[56]
        if len(value) < 24:
            raise TranslationError("original data elements too short (field 56)")
        original_mti = CANONICAL_MTIS.get(value[:4], value[:4])
        acquirer = value[24:].lstrip("0")
        out[90] = f"{original_mti}{value[4:10]}{value[12:22]}{acquirer.zfill(11)}{'0' * 11}"
    if 30 in wire:
        out[95] = wire[30][12:24] + "0" * 30
    return Message(mti, out)


def to_wire(message: Message, request: Message | None, year: int) -> Message:
    """The shetab93 form of a canonical message; ``request`` (the wire request a response
    answers) supplies echoed fields, ``year`` the century-less year of dates."""
    mti = MTIS.get(message.mti)
    if mti is None:
        raise TranslationError(f"MTI {message.mti} has no shetab93 equivalent")
    fields = message.fields
    yy = f"{year % 100:02d}"
    out = {n: fields[n] for n in SAME if n in fields}
    if 12 in fields:
        out[12] = f"{yy}{fields.get(13, '0101')}{fields[12]}"
    if 15 in fields:
        out[15] = f"{yy}{fields[15]}"
    if 22 in fields:
        out[22] = f"000000{fields[22]}000"
    if 18 in fields:
        out[26] = fields[18]
    if 39 in fields:
        out[39] = ACTION_CODES.get(fields[39], "909")
    if 43 in fields:
        out[43] = fields[43].rstrip()
    if 70 in fields:
        out[24] = FUNCTION_CODES.get(fields[70], "000")
    if 90 in fields:
        value = fields[90]
        acquirer = value[20:31].lstrip("0") or "0"
        out[56] = f"{MTIS.get(value[:4], value[:4])}{value[4:10]}{yy}{value[10:20]}" + (
            f"{len(acquirer):02d}{acquirer}"
        )
    if 95 in fields:
        out[30] = f"{fields.get(4, '0' * 12)}{fields[95][:12]}"
    if request is not None:  # a response echoes the request's own wire fields exactly
        for number in (12, 22, 24, 26, 43, 56, 30):
            if number in request.fields and number in out:
                out[number] = request.fields[number]
    return Message(mti, out)


SHETAB93 = Dialect(
    name="shetab93",
    fields=FIELDS,
    framing_default=Framing.ASCII4,
    response_mti=RESPONSE_MTI,
    echo_fields=ECHO_FIELDS,
    to_canonical=to_canonical,
    to_wire=to_wire,
)
