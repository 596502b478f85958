"""Structured logs: one JSON object per line, with PANs masked and secrets never written.

Use ``logging.getLogger("honar.<package>")`` and pass fields in ``extra``. The formatter masks
anything that looks like a PAN (13-19 digits) in the message and every field, and drops fields
whose names say they hold secrets (pin, key, cvv, track).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, cast

from ledger.jsonenc import json_encoder

PAN_LENGTH_MIN = 13  # the shortest PAN _PAN matches: 6 + 3 + 4 digits
_PAN = re.compile(r"(?<!\d)(\d{6})(\d{3,9})(\d{4})(?!\d)")
_SECRET_NAMES = ("pin", "key", "cvv", "track", "tpk", "tak", "tmk", "bdk", "lmk")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def mask_pans(text: str) -> str:
    """Replace the middle digits of anything shaped like a PAN with ``*``.

    >>> mask_pans("card 6362149173324546 ok")
    'card 636214******4546 ok'
    """
    if len(text) < PAN_LENGTH_MIN:  # most fields (ids, codes) are too short to hold a PAN
        return text
    return _PAN.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    return match.group(1) + "*" * len(match.group(2)) + match.group(3)


def _masked(value: Any) -> Any:
    """A log field value with PANs masked, whatever its type (nested values become text)."""
    kind = type(value)
    if kind is str:  # the commonest, first
        return mask_pans(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**12 else mask_pans(str(value))
    if isinstance(value, str):
        return mask_pans(value)
    return mask_pans(json.dumps(value, default=str, ensure_ascii=False))


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(secret in lowered for secret in _SECRET_NAMES)


# One encoder for every line: json.dumps with options builds a new encoder per call.
_ENCODER = json_encoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line."""

    def __init__(self) -> None:
        super().__init__()
        # extra field name -> written or not (a secret-looking name is dropped); the names
        # are the code's own, so the table stays small
        self._kept: dict[str, bool] = {}
        # (second, its text), replaced as one object: threads format lines concurrently
        # (log_fields formats outside the handler's lock)
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        """ISO 8601 in UTC with microseconds; the part up to the second is built once per
        second (most lines of a busy switch share it)."""
        second = int(created)
        cached = self._second
        if cached[0] != second:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            cached = self._second = (second, text)
        micros = min(int((created - second) * 1_000_000), 999_999)
        return f"{cached[1]}.{micros:06d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        """See :class:`logging.Formatter`."""
        fields = vars(record)
        extra = {n: fields[n] for n in fields if n not in _STANDARD}  # in the order given
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(
            record.created, record.levelname, record.name, record.getMessage(), extra, exc
        )

    def line(
        self,
        created: float,
        level_name: str,
        logger_name: str,
        message: str,
        extra: dict[str, Any],
        exc: str | None = None,
    ) -> str:
        """The JSON line for a record's parts: what :meth:`format` writes, also used by
        :func:`log_fields` without building a record."""
        entry: dict[str, Any] = {
            "t": self._timestamp(created),
            "level": level_name.lower(),
            "logger": logger_name,
            "msg": mask_pans(message),
        }
        kept = self._kept
        for name, value in extra.items():
            keep = kept.get(name)
            if keep is None:
                keep = kept[name] = not (name.startswith("_") or _is_secret(name))
            if keep:
                entry[name] = _masked(value)
        if exc is not None:
            entry["exc"] = mask_pans(exc)
        return _ENCODER(entry)


LOG_FLUSH_INTERVAL_S = 0.1  # a buffered line waits at most about this long to be written
LOG_LINES_MAX = 512  # or until this many lines are waiting


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes lines in bunches instead of one write call per line.

    Every write to a stream is a system call during which another thread takes the GIL; in the
    switch that made each INFO line cost a GIL round trip with the ledger's commit thread
    (docs/benchmarks.md). Lines wait until :data:`LOG_LINES_MAX` are pending, until
    :data:`LOG_FLUSH_INTERVAL_S` has passed since the first of them (checked at each line and by
    the switch's own timer), or until a WARNING or worse arrives, which is written at once with
    everything before it. ``logging.shutdown`` at exit writes what is left.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._first_at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        """Format and queue a line; write the queue when it is due."""
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.queue_line(line, record.levelno)

    def queue_line(self, line: str, levelno: int) -> None:
        """Queue a formatted line (the caller holds the handler's lock, as in :meth:`emit`);
        write the queue when it is due."""
        now = time.monotonic()
        if not self._lines:
            self._first_at = now
        self._lines.append(line)
        if (
            levelno >= logging.WARNING
            or len(self._lines) >= LOG_LINES_MAX
            or now - self._first_at >= LOG_FLUSH_INTERVAL_S
        ):
            self._write()

    def flush(self) -> None:
        """Write every waiting line."""
        with self.lock or contextlib.nullcontext():
            self._write()

    def _write(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream at exit: nothing left to tell
            pass


def _direct_handler(logger: logging.Logger, level: int) -> BufferedLineHandler | None:
    """The one handler a record of ``logger`` at ``level`` would reach, when the plain logging
    set-up of :func:`setup_logging` is all there is: no filters and no handlers on the way up,
    and the root's only handler a :class:`BufferedLineHandler` with a :class:`JsonFormatter`.
    Anything else (a test's capture handler, an operator's extra handler) gives None."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        if current.parent is None:  # the root
            handlers = current.handlers
            if len(handlers) != 1:
                return None
            handler = handlers[0]
            if (
                type(handler) is not BufferedLineHandler
                or type(handler.formatter) is not JsonFormatter
                or handler.filters
                or level < handler.level
            ):
                return None
            return handler
        if current.handlers or not current.propagate:
            return None
        current = current.parent
    return None


def log_fields(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, message, extra=fields)``, and the same line, for the switch's hot
    path: with the set-up of :func:`setup_logging` the line is formatted and queued directly,
    without a :class:`logging.LogRecord` or the handler chain (about 40 % of a line's cost,
    docs/benchmarks.md). ``message`` is taken as is (no %-arguments)."""
    if not logger.isEnabledFor(level):
        return
    if not _STANDARD.isdisjoint(fields):  # as logging.Logger.makeRecord refuses them
        clash = sorted(_STANDARD & fields.keys())
        raise KeyError(f"log fields may not be named as a record's attributes: {clash}")
    handler = _direct_handler(logger, level)
    if handler is None:
        logger.log(level, message, extra=fields)
        return
    formatter = cast(JsonFormatter, handler.formatter)  # _direct_handler checked its type
    try:
        line = formatter.line(
            time.time(), logging.getLevelName(level), logger.name, message, fields
        )
    except Exception:  # as logging itself does: a line that cannot be made must not raise
        logger.log(level, message, extra=fields)
        return
    with handler.lock or contextlib.nullcontext():
        handler.queue_line(line, level)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is when a line is written, not when logging was set
    up (a replaced stderr, e.g. a test runner's capture, may be closed by then)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "INFO", *, buffered: bool = False) -> None:
    """Send JSON log lines to stderr (in bunches when ``buffered``: the switch's server)."""
    # Nothing in a line needs the caller's file and line, thread or process names: skip
    # looking them up for every record (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = _CurrentStderr()
    handler = BufferedLineHandler(stream) if buffered else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def flush_logs() -> None:
    """Write every buffered log line now (the switch calls this on a timer)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
