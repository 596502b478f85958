"""The shape of a dialect: one :class:`FieldSpec` row per field, turned into a pyiso8583 spec.

Field formats follow ISO 8583 notation:

======  ==========================================================
``n``   numeric digits, right-justified, zero-padded
``an``  letters and digits (space allowed as padding)
``ans`` printable ASCII, left-justified, space-padded
``z``   track 2 characters: digits, ``=`` or ``D`` separators
``b``   raw bytes on the wire (hex strings inside the program)
======  ==========================================================
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from switch.message import Message


class Framing(enum.Enum):
    """How a message is delimited on a TCP stream."""

    ASCII4 = "ascii4"  # 4 ASCII decimal digits, the length of what follows
    BINARY2 = "binary2"  # 2-byte big-endian unsigned length


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a dialect: number, name, format, length prefix digits (0 = fixed), size."""

    number: int
    name: str
    format: str
    prefix_digits: int
    length_max: int

    @property
    def fixed(self) -> bool:
        """True for fixed-length fields (no length prefix)."""
        return self.prefix_digits == 0


@dataclass(frozen=True)
class Dialect:
    """A message profile: field table, MTI pairs, response codes, processing codes."""

    name: str
    fields: tuple[FieldSpec, ...]
    framing_default: Framing
    response_mti: dict[str, str]
    mac_fields: tuple[int, int] = (64, 128)
    echo_fields: tuple[int, ...] = ()
    # The flows speak the canonical (shetab87) shape. A dialect with another shape translates:
    # to_canonical(wire message) and to_wire(canonical message, wire request or None, year).
    to_canonical: Callable[[Message], Message] = field(default=lambda message: message)
    to_wire: Callable[[Message, Message | None, int], Message] = field(
        default=lambda message, request, year: message
    )
    by_number: dict[int, FieldSpec] = field(init=False, repr=False, compare=False)
    pyiso_spec: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_number = {f.number: f for f in self.fields}
        assert len(by_number) == len(self.fields), f"{self.name}: duplicate field numbers"
        object.__setattr__(self, "by_number", by_number)
        object.__setattr__(self, "pyiso_spec", build_pyiso_spec(self.fields))


# A field outside the dialect's table still needs an entry in the pyiso8583 spec, or the
# library raises KeyError. An impossible fixed length makes decoding fail *at that field*,
# with everything before it decoded, so the codec can name the field and salvage MTI/11/41.
UNDEFINED_FIELD_LENGTH = 1_000_000


def build_pyiso_spec(fields: tuple[FieldSpec, ...]) -> dict[str, Any]:
    """Build the pyiso8583 spec dict: ASCII MTI, 16-hex-char bitmaps, fields as given."""
    spec: dict[str, Any] = {
        "h": _entry("ascii", 0, 0, "Message header"),
        "t": _entry("ascii", 0, 4, "Message type indicator"),
        "p": _entry("ascii", 0, 16, "Primary bitmap"),
        "1": _entry("ascii", 0, 16, "Secondary bitmap"),
    }
    for number in range(2, 129):
        spec[str(number)] = _entry("b", 0, UNDEFINED_FIELD_LENGTH, "(not in dialect)")
    for f in fields:
        data_enc = "b" if f.format == "b" else "ascii"
        spec[str(f.number)] = _entry(data_enc, f.prefix_digits, f.length_max, f.name)
    return spec


def _entry(data_enc: str, len_type: int, max_len: int, desc: str) -> dict[str, Any]:
    return {
        "data_enc": data_enc,
        "len_enc": "ascii",
        "len_type": len_type,
        "max_len": max_len,
        "desc": desc,
    }
