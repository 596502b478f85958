"""``honar startup-bench`` prepares a ledger, starts the switch, times it and gets a first
purchase approved; it prints figures and asserts no timing. Its options are checked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from scripts import startup_bench
from switch.cli import main


def test_startup_bench_starts_the_switch_and_gets_the_first_purchase_approved(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "ledger"
    arguments = ["startup-bench", "--members", "20", "--runs", "2", "--data-dir", str(data_dir)]
    assert main(["--log-level", "WARNING", *arguments]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("ledger: 20 synthetic members")
    assert lines[1].split() == ["start", "cache", "listening", "s", "first", "answer", "s", "code"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "2"]
    for _number, cache, listening, answered, code in rows:
        assert cache == "warm"
        assert 0 < float(listening) <= float(answered)
        assert code == "00"  # the last synthetic member's purchase, MAC verified
    # the ledger was kept (--data-dir), and a second run reuses it as it is
    assert (data_dir / "honar.db").is_file()
    assert main(["--log-level", "WARNING", *arguments[:-2], "--runs", "1", *arguments[-2:]]) == 0
    again = capsys.readouterr().out
    assert "ledger: 20 synthetic members" in again
    assert again.strip().splitlines()[-1].split()[-1] == "00"
    # each start's purchase was a request of its own, not a retransmission of another's
    with sqlite3.connect(data_dir / "honar.db") as db:
        rows = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT stan) FROM transactions WHERE tid = 'HNR00004'"
        ).fetchone()
    assert rows == (3, 3)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--members", "0", "--members must be 1-1,000,000, got 0"),
        ("--members", "1000001", "--members must be 1-1,000,000, got 1000001"),
        ("--runs", "0", "--runs must be 1-20, got 0"),
        ("--runs", "21", "--runs must be 1-20, got 21"),
    ],
)
def test_startup_bench_refuses_options_out_of_range(
    capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    assert main(["startup-bench", option, value]) == 2
    assert message in capsys.readouterr().err


def test_startup_bench_cold_without_the_page_cache_control_fails_with_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(startup_bench, "DROP_CACHES", tmp_path / "absent" / "drop_caches")
    arguments = ["startup-bench", "--members", "3", "--runs", "1", "--cold"]
    assert main(["--log-level", "WARNING", *arguments, "--data-dir", str(tmp_path / "l")]) == 1
    captured = capsys.readouterr()
    assert "honar startup-bench: --cold needs to write" in captured.err
    assert "drop_caches (Linux, as root)" in captured.err
    assert captured.out.strip().splitlines()[-1].split()[0] == "start"  # no start was timed
