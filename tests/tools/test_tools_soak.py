"""``honar soak`` drives the switch at a steady rate in intervals and watches it: rows, a
summary, exit 0 when all was answered 00; its options and its log reading are checked."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.soak import Sample, error_lines, interval_lengths, summary
from switch.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_soak_prints_a_row_per_interval_and_a_clean_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arguments = ["soak", "--duration", "3", "--interval", "1.5", "--rate", "100"]
    assert main(["--log-level", "WARNING", *arguments, "--members", "20"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("soak: 100/s offered for 3 s in rows of 1.5 s")
    assert lines[1].split()[:3] == ["at", "s", "answered"]
    rows = [t for t in (line.split() for line in lines[2:]) if len(t) == 13 and t[1].isdigit()]
    assert len(rows) == 2
    for row in rows:
        answered, lost, not00 = int(row[1]), int(row[2]), int(row[3])
        assert answered > 0 and lost == 0 and not00 == 0
        rss, fds, threads = float(row[8]), int(row[9]), int(row[10])
        assert rss > 0 and fds > 0 and threads >= 2  # the loop and the ledger's commit thread
    summary_line = next(line for line in lines if line.startswith("2 intervals"))
    assert "0 lost, 0 not 00; error lines in the switch's log: 0" in summary_line


def test_error_lines_are_the_json_lines_at_error_or_critical(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text(
        "Honar Switch listening on 127.0.0.1:1\n"
        '{"level": "info", "msg": "answered"}\n'
        '{"level": "error", "msg": "ledger failure"}\n'
        "not json {\n"
        '["a list"]\n'
        '{"level": "critical", "msg": "down"}\n'
        '{"level": "warning", "msg": "MAC verification failed"}\n'
    )
    found = error_lines(log)
    assert [line.split('"msg": ')[1] for line in found] == ['"ledger failure"}', '"down"}']


def test_summary_of_no_interval_and_of_two() -> None:
    assert summary([], 0) == "no interval ran"
    first = Sample(30, 100, 0, 0, 1.0, 5.0, 9.0, 0.8, 60.0, 28, 3, 10.0, 4.0)
    last = Sample(60, 90, 2, 1, 1.5, 7.5, 12.5, 0.9, 61.5, 28, 3, 20.0, 4.0)
    text = summary([first, last], 3)
    assert "2 intervals, 60 s: 190 answered, 2 lost, 1 not 00; error lines" in text
    assert "p99 per interval: 5.00-7.50 ms; max 12.50 ms; CPU per answer 0.800-0.900 ms" in text
    assert "RSS 60.0 MiB after the first interval, 61.5 MiB after the last (max 61.5)" in text


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--duration", "0.5", "--duration must be 1-86400, got 0.5"),
        ("--rate", "5001", "--rate must be 1-5000, got 5001"),
        ("--interval", "601", "--interval must be 1-600, got 601"),
        ("--members", "0", "--members must be 1-1,000,000, got 0"),
        ("--connections", "257", "--connections must be 1-256, got 257"),
    ],
)
def test_soak_refuses_options_out_of_range(
    capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    assert main(["soak", option, value]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("duration", "interval", "lengths"),
    [(10, 3, [3, 3, 3, 1]), (3, 1.5, [1.5, 1.5]), (6, 2, [2, 2, 2]), (1, 30, [1])],
)
def test_interval_lengths_cover_the_duration_without_a_sliver(
    duration: float, interval: float, lengths: list[float]
) -> None:
    assert interval_lengths(duration, interval) == lengths


def test_soak_interrupted_stops_the_switch_and_reports_what_it_measured() -> None:
    command = [sys.executable, "-m", "scripts.soak", "--duration", "60", "--interval", "1"]
    process = subprocess.Popen(
        [*command, "--rate", "50", "--members", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # wait for the first interval's row
            lines.append(line)
            if len(line.split()) == 13 and line.split()[1].isdigit():
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1, err
    text = "".join(lines) + out
    assert "interrupted after" in text
    measured = re.search(r"interrupted after (\d+) intervals?\n", text)
    assert measured is not None and int(measured[1]) >= 1, text
    assert f"{measured[1]} interval" in text and "0 lost, 0 not 00" in text
    assert "Traceback" not in err
