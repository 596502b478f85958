"""Trace writer (rotation, caps, on/off), reader errors, ``honar trace show`` and ``mask``."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scripts.pos import PosTerminal
from scripts.trace import mask, mask_pan, show
from switch.codec import decode
from switch.dialects import get_dialect
from switch.trace import TraceError, TraceRecord, TraceWriter, read_trace

DIALECT = get_dialect("shetab87")
M0002 = ("6362149173324546", "4321")
M0006 = ("6362144899564327", "9876")
FIXED = datetime(2026, 12, 4, 10, 15, 2, 318204, tzinfo=UTC)


def frames(count: int, size: int = 100) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(count)]


def test_writer_is_silent_when_off_and_writes_spec_lines_when_on(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, clock=lambda: FIXED)
    writer.write("c1", "127.0.0.1:1", "in", b"0800")
    assert writer.files() == [] and writer.frames_written == 0
    writer.enable()
    writer.write("c1", "127.0.0.1:50312", "in", b"0800")
    writer.write("c1", "127.0.0.1:50312", "out", b"0810")
    writer.close()
    (path,) = writer.files()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "t": "2026-12-04T10:15:02.318204Z",
        "conn": "c1",
        "peer": "127.0.0.1:50312",
        "dir": "in",
        "hex": b"0800".hex().upper(),
    }
    assert [r.payload for r in read_trace(path)] == [b"0800", b"0810"]


def test_writer_rotates_at_the_size_cap_and_keeps_at_most_files_max(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, file_size_max=1000, files_max=3, enabled=True)
    sent = frames(40)  # each line is ~300 bytes: 3 lines per file
    for payload in sent:
        writer.write("c1", "p", "in", payload)
    writer.close()
    files = writer.files()
    assert len(files) == 3, "files_max caps the number of trace files"
    assert all(f.stat().st_size <= 1000 for f in files), "no file passes file_size_max"
    kept = [r.payload for f in files for r in read_trace(f)]
    assert kept == sent[-len(kept) :], "the newest frames are kept, in order"
    assert len(kept) >= 7


def test_a_line_larger_than_the_cap_still_gets_written(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, file_size_max=100, files_max=5, enabled=True)
    writer.write("c1", "p", "in", b"x" * 500)
    writer.write("c1", "p", "in", b"y" * 500)
    writer.close()
    assert [len(read_trace(f)) for f in writer.files()] == [1, 1]


def test_file_names_stay_ordered_when_the_clock_stands_still(tmp_path: Path) -> None:
    writer = TraceWriter(
        tmp_path, file_size_max=200, files_max=10, enabled=True, clock=lambda: FIXED
    )
    for payload in frames(5):
        writer.write("c1", "p", "in", payload)
    writer.close()
    payloads = [r.payload for f in writer.files() for r in read_trace(f)]
    assert payloads == frames(5)


def test_toggle_turns_tracing_off_and_on(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, enabled=True)
    writer.write("c1", "p", "in", b"a")
    assert writer.toggle() is False
    writer.write("c1", "p", "in", b"b")
    assert writer.toggle() is True
    writer.write("c1", "p", "in", b"c")
    writer.close()
    assert [r.payload for f in writer.files() for r in read_trace(f)] == [b"a", b"c"]


def test_reader_skips_comments_blank_lines_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        "# a hand-written trace\n\n"
        '{"dir": "in", "hex": "30383030", "extra": [1, 2], "note": "hello"}\n'
        "   \n"
        '{"t": "2026-12-04T10:15:02.318204Z", "conn": "c1", "dir": "out", "hex": "3038"}\n'
    )
    records = read_trace(path)
    assert [(r.line, r.direction, r.payload, r.note) for r in records] == [
        (3, "in", b"0800", "hello"),
        (5, "out", b"08", None),
    ]
    assert records[1].timestamp() == FIXED


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"hex": "3038"}', "missing 'dir'"),
        ('{"dir": "in"}', "missing 'hex'"),
        ('{"dir": "sideways", "hex": "3038"}', "'dir' must be"),
        ('{"dir": "in", "hex": "3G"}', "hex digits"),
        ('{"dir": "in", "hex": ""}', "empty"),
        ("[1, 2]", "JSON object"),
        ('{"dir": "in", "hex": "30", "conn": 17}', "'conn' must be a string"),
    ],
)
def test_reader_errors_name_the_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('# header\n{"dir": "in", "hex": "3038"}\n\n' + line + "\n")
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert caught.value.line == 4
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"{path}:4: ")


def session_trace(tmp_path: Path) -> Path:
    """A trace of requests and made-up answers with PANs in fields 2, 35 and 48."""
    terminal = PosTerminal.demo("HNR00004")
    requests = [
        terminal.purchase(pan=M0002[0], pin=M0002[1], amount=1000),
        terminal.card_request(
            processing_code="310000",
            pan=M0006[0],
            pin=M0006[1],
            amount=None,
            expiry="2812",
            use_track2=True,
        ),
        terminal.card_request(
            processing_code="000000",
            pan=M0002[0],
            pin=M0002[1],
            amount=5,
            expiry="2812",
            extra={48: "XYZ016" + M0002[0]},
        ),
        terminal.network("301"),
    ]
    records = []
    for payload in requests:
        records.append(TraceRecord(0, "in", payload, conn="c1"))
    truncated = terminal.purchase(pan=M0006[0], pin=M0006[1], amount=7)[:-3]  # MAC cut short
    records.append(TraceRecord(0, "in", truncated, conn="c1"))
    path = tmp_path / "session.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in records))
    return path


def test_mask_removes_every_full_pan_and_zeroes_pin_blocks(tmp_path: Path) -> None:
    source = session_trace(tmp_path)
    target = tmp_path / "masked.jsonl"
    counts = mask(source, target, DIALECT)
    assert counts.frames == 5 and counts.masked == 4 and counts.undecodable_kept == 1
    text = target.read_text()
    records = read_trace(target)
    decoded_bytes = b"".join(r.payload for r in records)
    for pan, _pin in (M0002, M0006):
        assert pan not in text
        assert pan.encode() not in decoded_bytes, "no full PAN left in any frame"
        assert mask_pan(pan).encode() in decoded_bytes
    for record in records[:3]:
        fields = decode(record.payload.replace(b"*", b"0"), DIALECT).fields
        assert fields[52] == "00" * 8
    undecodable = records[4]
    assert undecodable.note is not None and "undecodable" in undecodable.note
    # Fields 2 and 52 were readable before the fault, so they are masked even there.
    assert M0006[0].encode() not in undecodable.payload
    pin_block = bytes.fromhex(decode(read_trace(source)[4].payload + b"abc", DIALECT).fields[52])
    assert pin_block not in undecodable.payload


def test_mask_can_drop_undecodable_frames(tmp_path: Path) -> None:
    target = tmp_path / "masked.jsonl"
    counts = mask(session_trace(tmp_path), target, DIALECT, drop_undecodable=True)
    assert counts.undecodable_dropped == 1 and len(read_trace(target)) == 4


def test_show_lists_fields_without_secrets(tmp_path: Path) -> None:
    out = io.StringIO()
    source = session_trace(tmp_path)
    assert show(source, out, DIALECT) == 1  # the garbage frame
    text = out.getvalue()
    assert "636214******4546" in text
    assert M0002[0] not in text.replace("XYZ016" + M0002[0], "")
    assert "(PIN block withheld)" in text and "(track 2 withheld)" in text
    assert "undecodable" in text
    masked = tmp_path / "masked.jsonl"
    mask(source, masked, DIALECT)
    out = io.StringIO()
    show(masked, out, DIALECT)
    assert "636214******4546" in out.getvalue() and M0002[0] not in out.getvalue()
