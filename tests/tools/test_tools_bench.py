"""``python -m scripts.bench --quick`` runs every server and prints the table; PostgreSQL rows
appear when PostgreSQL is reachable, are skipped with one line otherwise (an error under CI)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PG_ADMIN_URL, service_missing

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1
BENCH_QUICK_TIMEOUT_S = 90  # the run itself keeps under about 45 s


def _bench(
    *args: str, timeout: float = 60, ci: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "scripts.bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def _postgres_reachable() -> bool:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.mark.slow
def test_bench_quick_prints_the_table() -> None:
    postgres = _postgres_reachable()
    pg_args = ["--pg-admin-url", PG_ADMIN_URL] if postgres else ["--no-postgres"]
    done = _bench("--quick", *pg_args, timeout=BENCH_QUICK_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "CPU ms/txn" in out
    servers = {"baseline", "switch", "switch-pg", "2xpg/p1", "2xpg/p2", "2xpg/sum"}
    rows = [
        line.split()
        for line in out.splitlines()
        if line.split()[:1] and line.split()[0] in servers and line.split()[1] in ("closed", "open")
    ]
    expected = [
        ("baseline", "closed", "8x4"),
        ("baseline", "closed", "8x16"),  # saturated: 128 in flight
        ("baseline", "open", "1000/s"),
        ("switch", "closed", "8x4"),
        ("switch", "closed", "8x16"),
        ("switch", "open", "1000/s"),
    ]
    if postgres:
        expected += [
            ("switch-pg", "closed", "8x4"),
            ("switch-pg", "closed", "8x16"),
            ("switch-pg", "open", "1000/s"),
            ("2xpg/p1", "closed", "8x4"),
            ("2xpg/p2", "closed", "8x4"),
            ("2xpg/sum", "closed", "8x4"),
        ]
    assert [(r[0], r[1], r[2]) for r in rows] == expected
    assert all(int(r[3]) > 0 for r in rows), "every phase got answers"
    assert "full/baseline: throughput" in out
    assert re.search(r"switch saturated \(8x16\): \d+ approved/s at [\d.]+ ms CPU each", out), out
    if not postgres:
        service_missing(f"PostgreSQL ({PG_ADMIN_URL})")
    by_server = {r[0]: r for r in rows if r[1] == "closed"}
    assert int(by_server["2xpg/sum"][3]) == int(by_server["2xpg/p1"][3]) + int(
        by_server["2xpg/p2"][3]
    )
    assert "PostgreSQL: one process" in out and "2 processes sharing the database" in out
    assert "PostgreSQL not pinned" in out


def test_bench_skips_unreachable_postgres_with_one_line() -> None:
    done = _bench("--only", "switch-pg", "--pg-admin-url", NOWHERE, ci="false")
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = [line for line in done.stderr.splitlines() if "PostgreSQL rows skipped" in line]
    assert len(skipped) == 1 and "127.0.0.1:1" in skipped[0]
    assert "switch-pg " not in done.stdout


def test_bench_requires_postgres_under_ci() -> None:
    done = _bench("--only", "2x-switch-pg", "--pg-admin-url", NOWHERE, ci="true")
    assert done.returncode != 0
    assert "PostgreSQL was required" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pg-admin-url", "mysql://x@h/db"], "--pg-admin-url must be a postgresql:// URL"),
        (["--members", "0"], "--members must be 1-100000, got 0"),
        (["--saturated-in-flight", "4097"], "--saturated-in-flight must be 0-4096, got 4097"),
    ],
)
def test_bench_names_a_bad_option(args: list[str], message: str) -> None:
    done = _bench("--only", "baseline", *args)
    assert done.returncode == 2
    assert message in done.stderr


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


def test_a_server_started_by_a_tool_stops_when_the_tool_is_killed(tmp_path: Path) -> None:
    tool = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from scripts.bench import free_port, honar_command, server_process\n"
        "port = free_port()\n"
        "command = honar_command('serve', '--port', str(port), '--data-dir', sys.argv[1])\n"
        "with server_process(command, port, Path(sys.argv[1]) / 'serve.log', pin=None) as p:\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", tool, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    server = 0
    try:
        assert process.stdout is not None
        server = int(process.stdout.readline())
        assert _running(server)
        process.kill()  # SIGKILL: the tool runs no clean-up of its own
        process.wait(10)
        deadline = time.monotonic() + 20
        while _running(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(server), "the server outlived the tool that started it"
    finally:
        process.kill()
        if server and _running(server):  # the failure case: leave nothing behind
            os.kill(server, signal.SIGTERM)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state


def test_the_two_baseline_codecs_answer_alike() -> None:
    """pyiso8583 called directly and the switch's codec give the same bytes for each request."""
    import asyncio

    from scripts.bench import baseline_handler
    from scripts.load import build_requests, default_stan_start
    from switch.codec import decode
    from switch.dialects import get_dialect

    requests = build_requests(20, terminal_id="HNR00001", stan_start=default_stan_start())
    ours, pyiso = baseline_handler("switch"), baseline_handler("pyiso8583")

    async def answers(handle: Any) -> list[bytes]:  # baseline_handler's handlers are Any
        return [await handle(payload, "test") for payload in requests]

    expected = asyncio.run(answers(ours))
    assert asyncio.run(answers(pyiso)) == expected
    first = decode(expected[0], get_dialect("shetab87"))
    assert (first.mti, first.fields[39]) == ("0210", "00")
    assert first.fields[11] == decode(requests[0], get_dialect("shetab87")).fields[11]
    with pytest.raises(ValueError, match="baseline codec must be one of switch, pyiso8583"):
        baseline_handler("fast")


def test_bench_with_the_pyiso8583_baseline() -> None:
    done = _bench("--quick", "--no-postgres", "--only", "baseline", "--baseline-codec", "pyiso8583")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("baseline ")]
    assert [row[1:3] for row in rows] == [["closed", "8x4"], ["closed", "8x16"], ["open", "1000/s"]]
    assert all(int(row[3]) > 0 and row[3] == row[4] for row in rows), rows  # all approved (00)


def test_path_bench_measure_needs_requests() -> None:
    from scripts.path_bench import measure

    with pytest.raises(ValueError, match="no requests to measure"):
        measure([], [], 1, "INFO")
