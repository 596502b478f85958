"""The settlement benchmark script runs (quick mode); it prints figures, asserts no timing."""

from __future__ import annotations

import pytest

from switch.cli import main


def test_settle_bench_quick_prints_time_and_peak_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--log-level", "WARNING", "settle-bench", "--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "export s" in lines[0] and "peak RSS MiB" in lines[0]
    assert lines[1].split()[0] == "10,000"
