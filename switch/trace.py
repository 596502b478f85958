"""Traces: a JSON-lines record of every frame in and out (spec/trace-format.md).

:class:`TraceWriter` is what the server calls for each frame (``write(conn, peer, dir,
payload)``). When tracing is off that call is one attribute test. When on, each frame becomes one
line, written and flushed at once, into ``trace-<UTC start time>.jsonl`` files under a directory;
a file is closed and a new one started before a line would take it past ``file_size_max`` bytes,
and the oldest trace files are deleted so that at most ``files_max`` remain.

:func:`read_trace` parses a trace file (blank and ``#`` lines skipped, unknown keys ignored) and
raises :class:`TraceError` naming the line for anything it cannot use.

>>> import tempfile
>>> from pathlib import Path
>>> directory = Path(tempfile.mkdtemp())
>>> writer = TraceWriter(directory, enabled=True)
>>> writer.write("c1", "127.0.0.1:50312", "in", b"0800")
>>> writer.close()
>>> [(r.conn, r.direction, r.payload) for r in read_trace(writer.files()[0])]
[('c1', 'in', b'0800')]
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("honar.trace")

FILE_PREFIX = "trace-"
FILE_SUFFIX = ".jsonl"
FILE_SIZE_MAX_DEFAULT = 64 * 1024 * 1024
FILES_MAX_DEFAULT = 20
DIRECTIONS = ("in", "out")


class TraceError(ValueError):
    """A trace line that cannot be used; ``line`` is its 1-based number in the file."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class TraceRecord:
    """One frame of a trace."""

    line: int  # 1-based line number in the file it was read from (0 when built in memory)
    direction: str  # "in" terminal -> switch, "out" switch -> terminal
    payload: bytes  # the message without its length prefix
    t: str | None = None
    conn: str | None = None
    peer: str | None = None
    note: str | None = None

    def to_json(self) -> str:
        """The record as one trace line (without the newline); absent keys are left out."""
        entry: dict[str, str] = {}
        if self.t is not None:
            entry["t"] = self.t
        if self.conn is not None:
            entry["conn"] = self.conn
        if self.peer is not None:
            entry["peer"] = self.peer
        entry["dir"] = self.direction
        entry["hex"] = self.payload.hex().upper()
        if self.note is not None:
            entry["note"] = self.note
        return json.dumps(entry, ensure_ascii=False)

    def timestamp(self) -> datetime | None:
        """``t`` as an aware datetime, or None when absent or unreadable."""
        if not self.t:
            return None
        try:
            parsed = datetime.fromisoformat(self.t.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and ``Z``.

    >>> format_time(datetime(2026, 12, 4, 10, 15, 2, 318204, tzinfo=UTC))
    '2026-12-04T10:15:02.318204Z'
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_line(text: str, line: int, source: str = "trace") -> TraceRecord | None:
    """One trace line as a record; None for blank and ``#`` lines; :class:`TraceError` if bad."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        entry = json.loads(stripped)
    except json.JSONDecodeError as error:
        reason = f"not valid JSON: {error.msg} (column {error.colno})"
        raise TraceError(source, line, reason) from None
    if not isinstance(entry, dict):
        raise TraceError(source, line, "a trace line must be a JSON object")
    for key in ("dir", "hex"):
        if key not in entry:
            raise TraceError(source, line, f"missing {key!r}")
    direction = entry["dir"]
    if direction not in DIRECTIONS:
        raise TraceError(source, line, f"'dir' must be 'in' or 'out', got {direction!r}")
    hex_text = entry["hex"]
    if not isinstance(hex_text, str):
        raise TraceError(source, line, "'hex' must be a string")
    try:
        payload = bytes.fromhex(hex_text)
    except ValueError:
        raise TraceError(source, line, "'hex' is not an even number of hex digits") from None
    if not payload:
        raise TraceError(source, line, "'hex' is empty")
    return TraceRecord(
        line=line,
        direction=direction,
        payload=payload,
        t=_optional_text(entry, "t", source, line),
        conn=_optional_text(entry, "conn", source, line),
        peer=_optional_text(entry, "peer", source, line),
        note=_optional_text(entry, "note", source, line),
    )


def _optional_text(entry: dict[str, Any], key: str, source: str, line: int) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TraceError(source, line, f"{key!r} must be a string, got {type(value).__name__}")


def iter_trace(path: str | Path) -> Iterator[TraceRecord]:
    """Yield the records of a trace file in order (see :func:`parse_line` for the rules)."""
    source = str(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TraceError(source, number, f"not UTF-8 text ({error.reason})") from None
            record = parse_line(text, number, source)
            if record is not None:
                yield record


def read_trace(path: str | Path) -> list[TraceRecord]:
    """Every record of a trace file; :class:`TraceError` (with the line number) if invalid."""
    return list(iter_trace(path))


class TraceWriter:
    """Writes traced frames to rotating JSON-lines files; cheap no-op while disabled.

    Limits: ``file_size_max`` bytes per file (a single line larger than that still gets a file
    of its own), ``files_max`` trace files kept in ``directory`` (the oldest are deleted).
    ``write`` may be called from the event loop and other threads alike.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        file_size_max: int = FILE_SIZE_MAX_DEFAULT,
        files_max: int = FILES_MAX_DEFAULT,
        enabled: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert file_size_max > 0 and files_max > 0
        self.directory = Path(directory)
        self.file_size_max = file_size_max
        self.files_max = files_max
        self.clock = clock
        self.enabled = enabled
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._size = 0
        self._last_start: datetime | None = None
        self.frames_written = 0

    @property
    def path(self) -> Path | None:
        """The file being written, or None."""
        return self._path

    def files(self) -> list[Path]:
        """The trace files in ``directory``, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.name.startswith(FILE_PREFIX) and p.name.endswith(FILE_SUFFIX)
        )

    def write(self, conn: str, peer: str, direction: str, payload: bytes) -> None:
        """Record one frame (the server's trace callback)."""
        if not self.enabled:
            return
        now = self.clock()
        # Built by hand: json.dumps of a dict costs about three times as much per frame.
        line = (
            f'{{"t": "{format_time(now)}", "conn": {json.dumps(conn)}, '
            f'"peer": {json.dumps(peer)}, "dir": "{direction}", '
            f'"hex": "{payload.hex().upper()}"}}\n'
        ).encode()
        with self._lock:
            if not self.enabled:
                return
            try:
                if self._file is None or (
                    self._size and self._size + len(line) > self.file_size_max
                ):
                    self._rotate(now)
                assert self._file is not None
                self._file.write(line)
                self._file.flush()
            except OSError as error:
                # A full disk must not take the switch down: stop tracing and say so.
                self.enabled = False
                self._close_file()
                log.error("tracing stopped: cannot write trace", extra={"error": str(error)})
                return
            self._size += len(line)
            self.frames_written += 1

    def enable(self) -> None:
        """Start tracing (a new file is opened at the next frame)."""
        with self._lock:
            self.enabled = True
        log.info("tracing on", extra={"directory": str(self.directory)})

    def disable(self) -> None:
        """Stop tracing and close the current file."""
        with self._lock:
            self.enabled = False
            self._close_file()
        log.info("tracing off", extra={"frames_written": self.frames_written})

    def toggle(self) -> bool:
        """Switch tracing on or off; return the new state."""
        if self.enabled:
            self.disable()
        else:
            self.enable()
        return self.enabled

    def close(self) -> None:
        """Close the current file (tracing stays in its state; a later frame reopens)."""
        with self._lock:
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._path = None
        self._size = 0

    def _rotate(self, now: datetime) -> None:
        self._close_file()
        self.directory.mkdir(parents=True, exist_ok=True)
        start = now.astimezone(UTC)
        if self._last_start is not None and start <= self._last_start:
            # The clock did not move on (or went back): names must stay unique and in order.
            start = self._last_start + timedelta(microseconds=1)
        self._last_start = start
        path = self.directory / f"{FILE_PREFIX}{start.strftime('%Y%m%dT%H%M%S.%fZ')}{FILE_SUFFIX}"
        # Make room first, so that at most files_max files exist at any time.
        existing = self.files()
        for old in existing[: max(len(existing) - (self.files_max - 1), 0)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        self._file = open(path, "ab")  # noqa: SIM115 - kept open across calls, closed in close()
        self._path = path
        self._size = path.stat().st_size
