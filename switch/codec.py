"""Codec: bytes <-> :class:`Message` for a dialect. Pure; pyiso8583 lives here only.

A :class:`Message` is the wire view: the MTI plus a mapping of field number to string value
(binary fields as uppercase hex, as pyiso8583 gives them). Decoding checks more than the
library does: every field must be in the dialect's table and match its format (digits for
``n``, printable ASCII for ``ans`` ...). Any failure is a :class:`CodecError` that names the
field and byte position, and keeps whatever was decoded before it so that the caller can still
answer ``30`` when MTI, field 11 and field 41 were readable.

>>> from switch.dialects import get_dialect
>>> d = get_dialect("shetab87")
>>> raw = encode(Message("0800", {7: "1204101502", 11: "000001", 70: "301"}), d)
>>> raw[:4]
b'0800'
>>> decode(raw, d).fields[70]
'301'
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

import iso8583

from switch.dialects.base import UNDEFINED_FIELD_LENGTH, Dialect, FieldSpec
from switch.message import Message as Message  # re-exported: the codec's value type


class CodecError(ValueError):
    """A message that cannot be decoded or encoded, with the field and position at fault.

    ``partial`` holds the fields decoded before the failure (MTI under ``"t"``).
    ``response_code_hint`` is what a switch answers when it can answer at all.
    """

    response_code_hint: str

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        pos: int | None = None,
        partial: Mapping[str, str] | None = None,
    ) -> None:
        where = []
        if field is not None:
            where.append(f"field {field}")
        if pos is not None:
            where.append(f"pos {pos}")
        super().__init__(f"{reason}" + (f" ({', '.join(where)})" if where else ""))
        self.reason = reason
        # on the instance, not the class: a class attribute is not seen by a mypyc-compiled class
        self.response_code_hint = "30"
        self.field = field
        self.pos = pos
        self.partial: dict[str, str] = dict(partial or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_codec_error, (self.reason, self.field, self.pos, self.partial))


def _rebuild_codec_error(
    reason: str, field: str | None, pos: int | None, partial: dict[str, str]
) -> CodecError:
    return CodecError(reason, field=field, pos=pos, partial=partial)


_PRINTABLE = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")
_ALNUM_SPACE = frozenset(string.ascii_letters + string.digits + " ")
_TRACK2 = frozenset(string.digits + "=D")
_HEX = frozenset("0123456789ABCDEF")


_ALLOWED = {"n": frozenset(string.digits), "an": _ALNUM_SPACE, "ans": _PRINTABLE, "z": _TRACK2}


def check_field(spec: FieldSpec, value: str) -> str | None:
    """Return why ``value`` is not valid for ``spec``, or None when it is."""
    fmt = spec.format
    if fmt == "b":
        if len(value) % 2 or not _HEX.issuperset(value):
            return "binary field must be an even number of uppercase hex digits"
        size = len(value) // 2
    else:
        size = len(value)
        # Fast path for the commonest format; isdigit alone would accept non-ASCII digits.
        if fmt == "n" and value.isascii() and (value.isdigit() or not value):
            pass
        elif not _ALLOWED[fmt].issuperset(value):
            return f"format {fmt} allows no such character"
    if size != spec.length_max and (spec.fixed or size > spec.length_max):
        if spec.fixed:
            return f"length {size}, expected exactly {spec.length_max}"
        return f"length {size}, at most {spec.length_max}"
    return None


def decode(raw: bytes, dialect: Dialect) -> Message:
    """Decode one framed-off message. Raises :class:`CodecError` with field context."""
    raw = bytes(raw)
    fast = _decode_fast(raw, _table_of(dialect))
    if fast is not None:
        return fast
    return _decode_checked(raw, dialect)


def _decode_checked(raw: bytes, dialect: Dialect) -> Message:
    """pyiso8583's decode plus the dialect's checks: the reference, and every error's source."""
    _check_bitmaps(raw, dialect)
    try:
        doc_dec, doc_enc = iso8583.decode(raw, dialect.pyiso_spec)
    except KeyError as missing:  # pragma: no cover - _check_bitmaps keeps fields 129+ out
        raise CodecError(
            f"field {missing.args[0]} is not defined in dialect {dialect.name}",
            field=str(missing.args[0]),
        ) from None
    except iso8583.DecodeError as error:
        partial = {k: v for k, v in error.doc_dec.items() if isinstance(v, str)}
        if error.field not in ("t", "p", "1", "h") and (
            dialect.pyiso_spec[error.field]["max_len"] == UNDEFINED_FIELD_LENGTH
        ):
            raise CodecError(
                f"field {error.field} is not defined in dialect {dialect.name}",
                field=error.field,
                pos=error.pos,
                partial=partial,
            ) from None
        raise CodecError(error.msg, field=error.field, pos=error.pos, partial=partial) from None
    mti = doc_dec["t"]
    if not (len(mti) == 4 and mti.isascii() and mti.isdigit()):
        raise CodecError("MTI must be 4 digits", field="t", pos=0, partial={})
    for bitmap in ("p", "1"):
        value = doc_dec.get(bitmap)
        if value is not None and not _HEX.issuperset(value):
            raise CodecError("bitmap must be uppercase hex", field=bitmap, partial=_strs(doc_dec))
    fields: dict[int, str] = {}
    by_number = dialect.by_number
    for key, value in doc_dec.items():
        if key in _NOT_DATA:
            continue
        number = int(key)
        problem = check_field(by_number[number], value)
        if problem is not None:
            raise CodecError(
                problem, field=key, pos=_field_pos(doc_enc, key), partial=_strs(doc_dec)
            )
        fields[number] = value
    return Message(mti, fields)


_NOT_DATA = frozenset({"t", "p", "1", "h"})


def _strs(doc_dec: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in doc_dec.items() if isinstance(v, str)}


def _field_pos(doc_enc: Mapping[str, Any], key: str) -> int | None:
    """Offset of field ``key`` in the message: the sizes of everything decoded before it."""
    position = 0
    for name, parts in doc_enc.items():
        if name == key:
            return position
        position += len(parts.get("len", b"")) + len(parts.get("data", b""))
    return None


def _check_bitmaps(raw: bytes, dialect: Dialect) -> None:
    """Reject what pyiso8583 would read as a tertiary bitmap, and an empty secondary bitmap.

    ISO 8583:1987 as in the spec has two bitmaps of 16 hex characters; bit 65 is not a field of
    the dialect, and a secondary bitmap is present only when some field 65-128 is.
    """
    if len(raw) < 36 or not raw[:4].isdigit():
        return
    try:
        primary, secondary = int(raw[4:20], 16), int(raw[20:36], 16)
    except ValueError:
        return  # pyiso8583 reports the bad bitmap with its position
    if not primary >> 63 & 1:
        return
    partial = {"t": raw[:4].decode(), "p": raw[4:20].decode()}
    if secondary >> 63 & 1 and 65 not in dialect.by_number:
        raise CodecError(
            f"field 65 (tertiary bitmap) is not defined in dialect {dialect.name}",
            field="65",
            pos=20,
            partial=partial,
        )
    if secondary == 0:
        raise CodecError(
            "secondary bitmap present but announces no field 65-128",
            field="1",
            pos=20,
            partial=partial,
        )


def encode(message: Message, dialect: Dialect) -> bytes:
    """Encode a message. Raises :class:`CodecError` when a field breaks the dialect."""
    fast = _encode_fast(message, _table_of(dialect))
    if fast is not None:
        return fast
    return _encode_checked(message, dialect)


def _encode_checked(message: Message, dialect: Dialect) -> bytes:
    """pyiso8583's encode after the dialect's checks: the reference, and every error's source."""
    if not (len(message.mti) == 4 and message.mti.isdigit()):
        raise CodecError("MTI must be 4 digits", field="t")
    doc: dict[str, Any] = {"t": message.mti}
    for number, value in message.fields.items():
        spec = dialect.by_number.get(number)
        if spec is None:
            raise CodecError(
                f"field {number} is not defined in dialect {dialect.name}", field=str(number)
            )
        problem = check_field(spec, value)
        if problem is not None:
            raise CodecError(problem, field=str(number))
        doc[str(number)] = value
    try:
        raw, _ = iso8583.encode(doc, dialect.pyiso_spec)
    except iso8583.EncodeError as error:  # pragma: no cover - check_field catches these first
        raise CodecError(error.msg, field=error.field) from None
    return bytes(raw)


def decode_plain(raw: bytes, dialect: Dialect) -> dict[str, str]:
    """pyiso8583's own ``decode`` on the dialect's spec and nothing more: no dialect checks, no
    fast path; keys as pyiso8583 has them ("t", "2".."128"). Only for comparing codecs
    (``honar bench --baseline-codec pyiso8583``); raises pyiso8583's DecodeError, a ValueError."""
    doc_dec, _ = iso8583.decode(raw, dialect.pyiso_spec)
    return _strs(doc_dec)


def encode_plain(fields: dict[str, str], dialect: Dialect) -> bytes:
    """pyiso8583's own ``encode`` of ``fields`` (keyed as :func:`decode_plain` gives them) on the
    dialect's spec and nothing more; for comparing codecs, as :func:`decode_plain`. Raises
    pyiso8583's EncodeError, a ValueError. ``fields`` is left as it was (pyiso8583's encode
    writes the bitmaps into the mapping it is given: it gets a copy)."""
    raw, _ = iso8583.encode(dict(fields), dialect.pyiso_spec)
    return bytes(raw)


def mac_field_of(message: Message) -> int:
    """The MAC field a message carries: 128 when any field 65-128 is present, else 64."""
    return 128 if any(number > 64 for number in message.fields if number != 128) else 64


def encode_for_mac(message: Message, dialect: Dialect) -> bytes:
    """Encode with a zero placeholder in the MAC field (64, or 128 with a secondary bitmap).

    The MAC field is always the message's last field, so the MAC covers ``raw[:-8]`` and the
    real MAC replaces the last 8 bytes.
    """
    mac_field = mac_field_of(message)
    fields = {k: v for k, v in message.fields.items() if k not in (64, 128)}
    fields[mac_field] = "00" * 8
    return encode(Message(message.mti, fields), dialect)


def encode_with_mac(
    message: Message, dialect: Dialect, generate_mac: Callable[[bytes], bytes]
) -> bytes:
    """Encode with a MAC over every byte up to the MAC field, the bitmap showing it present."""
    raw = encode_for_mac(message, dialect)
    mac = generate_mac(raw[:-8])
    assert len(mac) == 8, "MAC must be 8 bytes"
    return raw[:-8] + mac


def mac_input(raw: bytes, message: Message) -> bytes | None:
    """The bytes a received message's MAC covers, or None when it carries no MAC field.

    The MAC field must be the message's last field (64 without secondary bitmap, 128 with).
    """
    expected = mac_field_of(message)
    if not message.has(expected):
        return None
    return bytes(raw[:-8])


# --- the fast path ----------------------------------------------------------------------------
#
# Decoding and encoding were more than half of the switch's own CPU per purchase (profiled:
# docs/benchmarks.md). The dialects use one simple layout (ASCII MTI, bitmaps as 16 uppercase
# hex characters, ASCII fields or raw bytes, ASCII length prefixes), so each dialect's field
# table is compiled once into tuples and read with bytes operations that run in C.
#
# The fast path only ever answers for a message that is valid in every respect; at the first
# irregularity it gives up (None) and the checked path above (pyiso8583 plus the dialect's
# checks) decodes or encodes again and raises the precise CodecError. pyiso8583 therefore stays
# the reference: tests/switch/test_switch_codec_fast.py checks that both paths agree on valid
# messages and on mutated ones, for every dialect.

_HEX_BYTES = b"0123456789ABCDEF"
_ALLOWED_BYTES = {
    fmt: bytes(sorted(ord(c) for c in allowed)) for fmt, allowed in _ALLOWED.items()
}

# number -> (is binary, prefix digits, maximum or exact length, allowed bytes or b"" for "n")
_Compiled = dict[int, tuple[bool, int, int, bytes]]
_TABLES: dict[int, tuple[Dialect, _Compiled]] = {}


def _table_of(dialect: Dialect) -> _Compiled:
    found = _TABLES.get(id(dialect))
    if found is not None and found[0] is dialect:
        return found[1]
    table: _Compiled = {
        spec.number: (
            spec.format == "b",
            spec.prefix_digits,
            spec.length_max,
            b"" if spec.format in ("b", "n") else _ALLOWED_BYTES[spec.format],
        )
        for spec in dialect.fields
        if 2 <= spec.number <= 128 and spec.number != 65  # bitmaps are not data fields
    }
    _TABLES[id(dialect)] = (dialect, table)
    return table


def _decode_fast(raw: bytes, table: _Compiled) -> Message | None:
    """The message, or None when anything about it is not plainly valid."""
    size = len(raw)
    mti = raw[:4]
    primary = raw[4:20]
    if size < 20 or not mti.isdigit() or primary.strip(_HEX_BYTES):
        return None
    bitmap = int(primary, 16)
    bits = 64
    position = 20
    if bitmap >> 63:
        secondary = raw[20:36]
        if len(secondary) < 16 or secondary.strip(_HEX_BYTES):
            return None
        low = int(secondary, 16)
        if low == 0 or low >> 63:  # an empty secondary bitmap, or a tertiary one
            return None
        bitmap = (bitmap << 64 | low) & ~(1 << 127)
        bits = 128
        position = 36
    fields: dict[int, str] = {}
    remaining = bitmap
    while remaining:
        top = remaining.bit_length()
        remaining ^= 1 << (top - 1)
        number = bits - top + 1
        spec = table.get(number)
        if spec is None:
            return None
        binary, prefix, length_max, allowed = spec
        if prefix:
            digits = raw[position : position + prefix]
            if len(digits) != prefix or not digits.isdigit():
                return None
            length = int(digits)
            if length > length_max:
                return None
            position += prefix
        else:
            length = length_max
        data = raw[position : position + length]
        if len(data) != length:
            return None
        position += length
        if binary:
            fields[number] = data.hex().upper()
        else:
            if allowed:
                if data.strip(allowed):
                    return None
            elif data and not data.isdigit():
                return None
            fields[number] = data.decode("ascii")
    if position != size:
        return None
    return Message(mti.decode("ascii"), fields)


def _encode_fast(message: Message, table: _Compiled) -> bytes | None:
    """The encoded message, or None when anything about it is not plainly valid."""
    mti = message.mti
    if len(mti) != 4 or not (mti.isascii() and mti.isdigit()):
        return None
    bitmap = 0
    parts: list[bytes] = []
    for number in sorted(message.fields):
        spec = table.get(number)
        if spec is None:
            return None
        binary, prefix, length_max, allowed = spec
        value = message.fields[number]
        if not value.isascii():
            return None
        data = value.encode("ascii")
        if binary:
            if len(data) % 2 or data.strip(_HEX_BYTES):
                return None
            data = bytes.fromhex(value)
        elif allowed:
            if data.strip(allowed):
                return None
        elif data and not data.isdigit():
            return None
        length = len(data)
        if prefix:
            if length > length_max:
                return None
            parts.append(b"%0*d" % (prefix, length))
        elif length != length_max:
            return None
        parts.append(data)
        bitmap |= 1 << (128 - number)
    if bitmap & ((1 << 64) - 1):  # some field 65-128: the secondary bitmap, announced by bit 1
        head = b"%016X%016X" % (bitmap >> 64 | 1 << 63, bitmap & ((1 << 64) - 1))
    else:
        head = b"%016X" % (bitmap >> 64)
    return mti.encode("ascii") + head + b"".join(parts)
