"""The ``shetab87`` dialect: ISO 8583:1987 ASCII as in spec/pos-interface.md §2.

Rules (one aligned row per field; change the table, not the code):
"""

from __future__ import annotations

from switch.dialects.base import Dialect, FieldSpec, Framing

# fmt: off
FIELDS = (
    #         no   name                                  format  prefix  max
    FieldSpec(2,   "PAN",                                "n",    2,      19),
    FieldSpec(3,   "processing code",                    "n",    0,      6),
    FieldSpec(4,   "amount, transaction",                "n",    0,      12),
    FieldSpec(7,   "transmission date & time",           "n",    0,      10),
    FieldSpec(11,  "STAN",                               "n",    0,      6),
    FieldSpec(12,  "local time",                         "n",    0,      6),
    FieldSpec(13,  "local date",                         "n",    0,      4),
    FieldSpec(14,  "expiry date",                        "n",    0,      4),
    FieldSpec(15,  "settlement date",                    "n",    0,      4),
    FieldSpec(18,  "merchant category code",             "n",    0,      4),
    FieldSpec(22,  "POS entry mode",                     "n",    0,      3),
    FieldSpec(25,  "POS condition code",                 "n",    0,      2),
    FieldSpec(32,  "acquiring institution id",           "n",    2,      11),
    FieldSpec(35,  "track 2",                            "z",    2,      37),
    FieldSpec(37,  "retrieval reference number",         "an",   0,      12),
    FieldSpec(38,  "authorization id",                   "an",   0,      6),
    FieldSpec(39,  "response code",                      "an",   0,      2),
    FieldSpec(41,  "terminal id",                        "ans",  0,      8),
    FieldSpec(42,  "card acceptor id",                   "ans",  0,      15),
    FieldSpec(43,  "card acceptor name/location",        "ans",  0,      40),
    FieldSpec(48,  "additional data, private",           "ans",  3,      999),
    FieldSpec(49,  "currency code",                      "n",    0,      3),
    FieldSpec(52,  "PIN block",                          "b",    0,      8),
    FieldSpec(53,  "security control (KSN)",             "b",    2,      48),
    FieldSpec(54,  "additional amounts",                 "ans",  3,      120),
    FieldSpec(64,  "MAC",                                "b",    0,      8),
    FieldSpec(70,  "network management code",            "n",    0,      3),
    FieldSpec(74,  "credits, number",                    "n",    0,      10),
    FieldSpec(76,  "debits, number",                     "n",    0,      10),
    FieldSpec(86,  "credits, amount",                    "n",    0,      16),
    FieldSpec(88,  "debits, amount",                     "n",    0,      16),
    FieldSpec(90,  "original data elements",             "n",    0,      42),
    FieldSpec(95,  "replacement amounts",                "an",   0,      42),
    FieldSpec(128, "MAC (secondary)",                    "b",    0,      8),
)

RESPONSE_MTI = {
    "0100": "0110", "0200": "0210", "0220": "0230", "0400": "0410",
    "0420": "0430", "0500": "0510", "0800": "0810",
    # Repeats (retransmissions) answer with the same response MTI as the original.
    "0101": "0110", "0201": "0210", "0221": "0230", "0401": "0410",
    "0421": "0430", "0501": "0510", "0801": "0810",
}

# A response echoes these request fields when they were present (pos-interface.md §5).
ECHO_FIELDS = (2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 90)
# fmt: on

SHETAB87 = Dialect(
    name="shetab87",
    fields=FIELDS,
    framing_default=Framing.ASCII4,
    response_mti=RESPONSE_MTI,
    echo_fields=ECHO_FIELDS,
)
