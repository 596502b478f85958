"""Structured logs: one JSON object per line, with PANs masked and secrets never written.

Use ``logging.getLogger("honar.<package>")`` and pass fields in ``extra``. The formatter masks
anything that looks like a PAN (13-19 digits) in the message and every field, and drops fields
whose names say they hold secrets (pin, key, cvv, track).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

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
    return _PAN.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)


def _masked(value: Any) -> Any:
    """A log field value with PANs masked, whatever its type (nested values become text)."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**12 else mask_pans(str(value))
    if isinstance(value, str):
        return mask_pans(value)
    return mask_pans(json.dumps(value, default=str, ensure_ascii=False))


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        """See :class:`logging.Formatter`."""
        entry: dict[str, Any] = {
            "t": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_pans(record.getMessage()),
        }
        for name, value in vars(record).items():
            if name in _STANDARD or name.startswith("_"):
                continue
            if any(secret in name.lower() for secret in _SECRET_NAMES):
                continue
            entry[name] = _masked(value)
        if record.exc_info:
            entry["exc"] = mask_pans(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO") -> None:
    """Send JSON log lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
