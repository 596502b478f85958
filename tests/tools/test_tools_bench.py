"""``python -m scripts.bench --quick`` runs both servers and prints the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "CPU ms/txn" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("baseline", "switch"))]
    assert [(r[0], r[1]) for r in rows] == [
        ("baseline", "closed"),
        ("baseline", "open"),
        ("switch", "closed"),
        ("switch", "open"),
    ]
    assert all(int(r[3]) > 0 for r in rows), "every phase got answers"
    assert "full/baseline: throughput" in out
