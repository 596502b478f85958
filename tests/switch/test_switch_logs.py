"""JSON log lines: PAN masking, secret-named fields dropped, and the server's buffered writing."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from switch import logs
from switch.logs import BufferedLineHandler, JsonFormatter


def make_logger(handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"honar.test.{id(handler)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_line_masks_pans_and_drops_secret_fields() -> None:
    stream = io.StringIO()
    logger = make_logger(logging.StreamHandler(stream))
    logger.info(
        "card 6362144899564327 paid",
        extra={"pan": "6362144899564327", "tpk": "U1234", "pin_block": "X", "tid": "HNR00004"},
    )
    entry = json.loads(stream.getvalue())
    assert entry["msg"] == "card 636214******4327 paid"
    assert entry["pan"] == "636214******4327"
    assert "tpk" not in entry and "pin_block" not in entry
    assert list(entry)[4:] == ["pan", "tid"]  # extra fields in the order given
    assert entry["level"] == "info"


def test_buffered_lines_wait_until_due(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    logger = make_logger(BufferedLineHandler(stream))
    logger.info("one")
    logger.info("two")
    assert stream.getvalue() == ""  # held back
    clock[0] += 2 * logs.LOG_FLUSH_INTERVAL_S
    logger.info("three")  # the first line has waited long enough: all three go
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [
        "one",
        "two",
        "three",
    ]


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    stream = io.StringIO()
    logger = make_logger(BufferedLineHandler(stream))
    logger.info("before")
    logger.warning("trouble")
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [
        "before",
        "trouble",
    ]


def test_a_full_buffer_is_written_and_flush_writes_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logs, "LOG_LINES_MAX", 3)
    stream = io.StringIO()
    handler = BufferedLineHandler(stream)
    logger = make_logger(handler)
    for index in range(4):
        logger.info("line %d", index)
    assert len(stream.getvalue().splitlines()) == 3
    handler.flush()
    assert len(stream.getvalue().splitlines()) == 4


@pytest.mark.parametrize("buffered", [False, True])
def test_lines_go_to_the_stderr_of_the_moment(
    monkeypatch: pytest.MonkeyPatch, buffered: bool
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        first = io.StringIO()
        monkeypatch.setattr("sys.stderr", first)
        logs.setup_logging("INFO", buffered=buffered)
        first.close()  # e.g. a test runner's capture, gone
        second = io.StringIO()
        monkeypatch.setattr("sys.stderr", second)
        logging.getLogger("honar.test").warning("still written")
        assert json.loads(second.getvalue())["msg"] == "still written"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_timestamps_match_datetime_to_the_microsecond() -> None:
    from datetime import UTC, datetime

    formatter = JsonFormatter()
    for created in (1764872400.123456, 1764872400.5, 1764872401.0, 1764872461.000001, 0.25):
        ours = datetime.fromisoformat(formatter._timestamp(created))
        theirs = datetime.fromtimestamp(created, UTC)
        assert abs((ours - theirs).total_seconds()) <= 1e-6
        assert formatter._timestamp(created).endswith("+00:00")


FIELDS = {"peer": "p", "tid": "HNR00004", "pan": "6362144899564327", "tpk": "U1", "n": 7}


@pytest.fixture(autouse=True)
def root_level_restored() -> Iterator[None]:
    """The root's level put back with setLevel, which also clears the loggers' level caches."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def root_setup(monkeypatch: pytest.MonkeyPatch, level: str = "INFO") -> io.StringIO:
    """setup_logging's set-up on the root logger, writing to a StringIO (restored after by
    the autouse fixture below)."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.setup_logging(level, buffered=True)
    return stream


def test_log_fields_writes_the_line_a_record_would(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = root_setup(monkeypatch)
    logger = logging.getLogger("honar.test.fast")
    handler = logging.getLogger().handlers[0]
    assert logs._direct_handler(logger, logging.INFO) is handler  # the direct path is taken
    with monkeypatch.context() as clock:
        clock.setattr(logs.time, "time", lambda: 1764872400.25)
        logs.log_fields(logger, logging.INFO, "answered", dict(FIELDS))
    logger.info("answered", extra=dict(FIELDS))
    handler.flush()
    direct, through_logging = (json.loads(line) for line in stream.getvalue().splitlines())
    assert direct["t"] == "2025-12-04T18:20:00.250000+00:00"
    del direct["t"], through_logging["t"]  # (logging takes its own clock)
    assert list(direct.items()) == list(through_logging.items())  # same fields, same order
    assert direct["pan"] == "636214******4327" and "tpk" not in direct


def test_log_fields_honours_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = root_setup(monkeypatch, "WARNING")
    logs.log_fields(logging.getLogger("honar.test.fast"), logging.INFO, "answered", {"a": 1})
    logs.flush_logs()
    assert stream.getvalue() == ""


def test_log_fields_goes_through_logging_when_another_handler_listens(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root_setup(monkeypatch)
    logger = logging.getLogger("honar.test.fast")
    logging.getLogger().addHandler(caplog.handler)  # a second handler on the root
    assert logs._direct_handler(logger, logging.INFO) is None
    logs.log_fields(logger, logging.INFO, "answered", {"tid": "HNR00004"})
    assert [(r.getMessage(), getattr(r, "tid", None)) for r in caplog.records] == [
        ("answered", "HNR00004")
    ]


def test_log_fields_refuses_record_attribute_names(monkeypatch: pytest.MonkeyPatch) -> None:
    root_setup(monkeypatch)
    with pytest.raises(KeyError, match=r"record's attributes: \['msg'\]"):
        logs.log_fields(
            logging.getLogger("honar.test.fast"), logging.INFO, "x", {"msg": "y", "tid": "T"}
        )


def test_direct_handler_needs_the_plain_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    root_setup(monkeypatch)
    logger = logging.getLogger("honar.test.fast.child")
    assert logs._direct_handler(logger, logging.INFO) is not None
    monkeypatch.setattr(logger, "propagate", False)
    assert logs._direct_handler(logger, logging.INFO) is None
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "filters", [logging.Filter("other")])
    assert logs._direct_handler(logger, logging.INFO) is None
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setattr(logging.getLogger().handlers[0], "level", logging.WARNING)
    assert logs._direct_handler(logger, logging.INFO) is None  # the handler would drop it
    assert logs._direct_handler(logger, logging.ERROR) is not None


def test_timestamps_stay_right_when_threads_format_at_once() -> None:
    formatter = JsonFormatter()
    wrong: list[tuple[float, str]] = []

    def work(base: float) -> None:
        for step in range(2_000):
            created = base + step * 0.5  # a new second every other line
            text = formatter._timestamp(created)
            if datetime.fromisoformat(text).timestamp() != pytest.approx(created, abs=1e-6):
                wrong.append((created, text))

    threads = [threading.Thread(target=work, args=(1764872400.0 + i * 10_000,)) for i in range(4)]
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(saved)
    assert wrong == []
