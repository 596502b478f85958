"""``python -m scripts.bench --quick`` runs both servers and prints the table."""

from __future__ import annotations

import json
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


def test_path_bench_measures_both_threads() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.path_bench", "--count", "300", "--warmup", "50", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.splitlines()[-1])
    assert row["purchases"] == 300
    assert row["loop_us"] > 0 and row["commit_us"] > 0
    assert row["total_us"] == pytest.approx(row["loop_us"] + row["commit_us"], abs=1)
    assert row["batch_mean"] >= 1


def test_path_bench_names_a_bad_limit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.path_bench", "--count", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "--count must be 1-200000, got 0" in done.stderr
