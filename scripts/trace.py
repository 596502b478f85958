"""``honar trace show|mask``: read a trace (spec/trace-format.md) as people, or make it shareable.

``show`` decodes every frame with the ``shetab87`` codec and lists its fields: PANs masked (first
6, last 4), track 2 and PIN blocks withheld. ``mask`` writes a copy that can leave the building:

* a decodable frame is decoded, its PIN block (52) set to zeros, the message re-encoded, and the
  PAN of fields 2 and 35 written with digits 7 to n-4 as ``*`` (everywhere that PAN occurs in the
  message, so a PAN copied into another text field goes too);
* an undecodable frame cannot be masked field by field. By default it is kept, with the PAN and
  PIN block masked wherever the fields decoded before the fault located them, and a ``note``
  saying so; ``--drop-undecodable`` leaves such frames out (a ``#`` comment marks the place).

A masked trace replays for codec and flow-shape checks only: its PINs and MACs no longer verify.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ledger.domain import mask_pan
from switch.codec import CodecError, Message, decode, encode
from switch.dialects import Dialect, get_dialect
from switch.requests import build_tlv, parse_tlv
from switch.trace import TraceRecord, iter_trace

PIN_BLOCK_ZERO = "00" * 8
WITHHELD = {35: "(track 2 withheld)", 52: "(PIN block withheld)"}


def track2_pan(track2: str) -> str:
    """The PAN part of a track 2 value (before ``=`` or ``D``)."""
    for separator in ("=", "D"):
        if separator in track2:
            return track2.split(separator, 1)[0]
    return track2


def lenient_decode(payload: bytes, dialect: Dialect) -> tuple[Message, bool]:
    """Decode; a masked frame (``*`` in PANs) decodes with the stars read as zeros.

    Returns the message and whether stars were substituted. Raises :class:`CodecError`.
    """
    try:
        return decode(payload, dialect), False
    except CodecError:
        if b"*" not in payload:
            raise
    return decode(payload.replace(b"*", b"0"), dialect), True


def display_value(number: int, value: str) -> str:
    """A field value fit for a screen or a report: PAN masked, track 2 and PIN block withheld."""
    if number == 2:
        return mask_pan(value)
    return WITHHELD.get(number, value)


def render_fields(message: Message, dialect: Dialect, indent: str = "  ") -> list[str]:
    """The message as lines: MTI, then ``number name value`` per field, secrets hidden."""
    lines = [f"{indent}MTI {message.mti}"]
    for number in sorted(message.fields):
        spec = dialect.by_number.get(number)
        name = spec.name if spec is not None else "?"
        lines.append(
            f"{indent}{number:>4}  {name:<30} {display_value(number, message.fields[number])}"
        )
    return lines


def header(record: TraceRecord) -> str:
    """One line naming a record: line number, time, connection, peer, direction."""
    arrow = "->" if record.direction == "in" else "<-"
    parts = [f"line {record.line}", record.t or "-", record.conn or "-"]
    if record.peer:
        parts.append(record.peer)
    return f"{arrow} {' '.join(parts)} ({record.direction}, {len(record.payload)} bytes)"


def show(path: str | Path, out: TextIO, dialect: Dialect) -> int:
    """Print every frame of a trace; return how many frames could not be decoded."""
    undecodable = 0
    for record in iter_trace(path):
        print(header(record), file=out)
        if record.note:
            print(f"  note: {record.note}", file=out)
        try:
            message, starred = lenient_decode(record.payload, dialect)
        except CodecError as error:
            undecodable += 1
            print(f"  undecodable: {error}", file=out)
            print(f"  {len(record.payload)} bytes, first 4: {record.payload[:4]!r}", file=out)
            continue
        if starred:
            print("  (masked frame: '*' digits read as 0)", file=out)
        for line in render_fields(message, dialect):
            print(line, file=out)
    return undecodable


@dataclass
class MaskCounts:
    """What ``mask`` did."""

    frames: int = 0
    masked: int = 0
    undecodable_kept: int = 0
    undecodable_dropped: int = 0


def _replace_all(payload: bytes, secrets: Mapping[bytes, bytes]) -> bytes:
    for clear, masked in secrets.items():
        if clear and clear != masked:
            payload = payload.replace(clear, masked)
    return payload


def _pans(fields: Mapping[str, str] | Mapping[int, str]) -> set[str]:
    lookup: dict[str, str] = {str(k): v for k, v in fields.items()}
    pans = set()
    if lookup.get("2"):
        pans.add(lookup["2"])
    if lookup.get("35"):
        pans.add(track2_pan(lookup["35"]))
    return {pan for pan in pans if pan.isdigit()}


def _mask_cvv2(value: str) -> str:
    """Field 48 with the value of tag ``P92`` (the CVV2) replaced by zeros."""
    try:
        tags = parse_tlv(value)
    except ValueError:
        return value
    if "P92" not in tags:
        return value
    tags["P92"] = "0" * len(tags["P92"])
    return build_tlv(tags)


def mask_record(
    record: TraceRecord, dialect: Dialect, *, drop_undecodable: bool = False
) -> TraceRecord | None:
    """The shareable form of one record (None: dropped). See the module docstring."""
    try:
        message = decode(record.payload, dialect)
    except CodecError as error:
        if drop_undecodable:
            return None
        secrets = {pan.encode(): mask_pan(pan).encode() for pan in _pans(error.partial)}
        pin_block = error.partial.get("52")
        if pin_block:
            secrets[bytes.fromhex(pin_block)] = bytes(8)
        note = f"undecodable ({error}); masked only where the fields decoded before the fault"
        note += " located PAN and PIN block: check before sharing"
        if record.note:
            note = f"{record.note}; {note}"
        return replace(record, payload=_replace_all(record.payload, secrets), note=note)
    fields = dict(message.fields)
    if 52 in fields:
        fields[52] = PIN_BLOCK_ZERO
    if 48 in fields:
        fields[48] = _mask_cvv2(fields[48])
    raw = encode(Message(message.mti, fields), dialect)
    secrets = {pan.encode(): mask_pan(pan).encode() for pan in _pans(message.fields)}
    return replace(record, payload=_replace_all(raw, secrets))


def mask(
    source: str | Path, target: str | Path, dialect: Dialect, *, drop_undecodable: bool = False
) -> MaskCounts:
    """Write the masked copy of trace ``source`` to ``target``."""
    counts = MaskCounts()
    records = list(iter_trace(source))  # parse it all first: no half-written output on error
    with open(target, "w", encoding="utf-8") as out:
        out.write(
            f"# masked copy of {Path(source).name}: PANs masked, PIN blocks and CVV2 zeroed\n"
        )
        for record in records:
            counts.frames += 1
            masked = mask_record(record, dialect, drop_undecodable=drop_undecodable)
            if masked is None:
                counts.undecodable_dropped += 1
                out.write(f"# line {record.line}: undecodable frame dropped\n")
                continue
            if masked.note and "undecodable" in masked.note:
                counts.undecodable_kept += 1
            else:
                counts.masked += 1
            out.write(masked.to_json() + "\n")
    return counts


def records_text(records: Iterable[TraceRecord]) -> str:
    """Records as trace-file text (used by tests and tools that edit traces)."""
    return "".join(record.to_json() + "\n" for record in records)


def register(commands: Any) -> None:
    """Add ``honar trace show|mask`` to the command line."""
    trace = commands.add_parser("trace", help="frame traces: show as fields, mask for sharing")
    trace_commands = trace.add_subparsers(dest="trace_command", required=True)
    show_parser = trace_commands.add_parser(
        "show", help="decode every frame into fields (PAN masked, track 2 and PIN withheld)"
    )
    show_parser.add_argument("file", help="trace file (JSON lines)")
    show_parser.add_argument("--dialect", default="shetab87")
    show_parser.set_defaults(func=_run_show)
    mask_parser = trace_commands.add_parser(
        "mask", help="write a shareable copy: PANs masked, PIN blocks zeroed"
    )
    mask_parser.add_argument("input", help="trace file to read")
    mask_parser.add_argument("output", help="masked trace file to write")
    mask_parser.add_argument("--dialect", default="shetab87")
    mask_parser.add_argument(
        "--drop-undecodable",
        action="store_true",
        help="leave out frames that cannot be decoded (default: keep them, partly masked)",
    )
    mask_parser.set_defaults(func=_run_mask)


def _run_show(args: argparse.Namespace) -> int:
    undecodable = show(args.file, sys.stdout, get_dialect(args.dialect))
    return 1 if undecodable else 0


def _run_mask(args: argparse.Namespace) -> int:
    if Path(args.input).resolve() == Path(args.output).resolve():
        raise ValueError("output must not be the input file")
    counts = mask(
        args.input, args.output, get_dialect(args.dialect), drop_undecodable=args.drop_undecodable
    )
    print(
        f"{counts.frames} frames: {counts.masked} masked, "
        f"{counts.undecodable_kept} undecodable kept (partly masked, see their notes), "
        f"{counts.undecodable_dropped} undecodable dropped -> {args.output}",
        file=sys.stderr,
    )
    return 0
