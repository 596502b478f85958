"""``honar soak``: the switch under a steady offered load for a long time, watched as it goes.

A benchmark answers "how fast"; a soak answers "does it stay so": no memory growth, no
descriptor or thread leak, no latency drift, no lost answer, over minutes or hours. The script

1. prepares a SQLite ledger with the demo data and synthetic members 1..``--members`` (they are
   cycled through, so the card cache, the velocity monitor and the daily totals see many cards);
2. starts ``honar serve`` on it as a child process (log level INFO, as deployed);
3. offers purchases at ``--rate`` per second (open loop, ``--connections`` connections) for
   ``--duration`` seconds in intervals of ``--interval`` seconds, each interval's requests
   built just before it (the build time is not part of the duration);
4. after each interval prints a row: answers, lost (not answered within 5 s), answers other
   than 00, latency p50/p99/max, the server's CPU per answer, resident memory, open file
   descriptors, threads, and the sizes of the database and its WAL;
5. at the end stops the switch (SIGTERM), counts its log lines at level error or above, and
   prints a summary.

Exit status 0 when every request was answered 00 and the switch logged no error, 1 otherwise
(and after Ctrl-C, which stops the switch and reports the intervals measured so far).
Bounds: ``--duration`` at most :data:`DURATION_S_MAX`, ``--rate`` at most :data:`RATE_MAX`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.synthetic import SYNTHETIC_MEMBERS_MAX
from scripts.bench import cpu_seconds, free_port, honar_command, server_process
from scripts.load import build_requests, default_stan_start, drive
from scripts.startup_bench import ledger_directory, prepare

DURATION_S_MAX = 24 * 3600.0
RATE_MAX = 5_000.0
INTERVAL_S_MIN = 1.0
INTERVAL_S_MAX = 600.0
CONNECTIONS_MAX = 256
TERMINAL = "HNR00004"
ANSWER_TIMEOUT_S = 5.0
SERVE_LOG = "serve.log"


@dataclass(frozen=True)
class Sample:
    """What one interval measured."""

    elapsed_s: float  # since the first interval started, at this one's end
    answered: int
    lost: int
    declined: int  # answers other than 00
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms_per_answer: float
    rss_mib: float
    fds: int
    threads: int
    db_mib: float
    wal_mib: float


def process_status(pid: int) -> tuple[float, int, int]:
    """Resident memory (MiB), open file descriptors and threads of process ``pid`` (Linux)."""
    rss_kib = 0
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "VmRSS":
            rss_kib = int(value.split()[0])
        elif name == "Threads":
            threads = int(value)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib / 1024, fds, threads


def _mib(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


def error_lines(log_path: Path) -> list[str]:
    """The switch's JSON log lines at level error or critical."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            found.append(line)
    return found


def row_text(sample: Sample) -> str:
    """One interval as a table row."""
    s = sample
    return (
        f"{s.elapsed_s:>7.0f} {s.answered:>8} {s.lost:>5} {s.declined:>5} {s.p50_ms:>7.2f} "
        f"{s.p99_ms:>7.2f} {s.max_ms:>8.2f} {s.cpu_ms_per_answer:>7.3f} {s.rss_mib:>8.1f} "
        f"{s.fds:>4} {s.threads:>4} {s.db_mib:>8.1f} {s.wal_mib:>7.1f}"
    )


HEADER = (
    f"{'at s':>7} {'answered':>8} {'lost':>5} {'not00':>5} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'max ms':>8} {'CPU ms':>7} {'RSS MiB':>8} {'fds':>4} {'thr':>4} {'db MiB':>8} "
    f"{'WAL MiB':>7}"
)


async def soak(args: argparse.Namespace, data_dir: Path, samples: list[Sample]) -> bool:
    """Serve, load, sample: a row printed and appended to ``samples`` per interval.

    Return True when stopped by SIGINT (Ctrl-C): the interval under way is cancelled and no
    other begins, so the switch is stopped and what was measured is reported.
    """
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    current: list[asyncio.Task[Any]] = []

    def on_interrupt() -> None:
        interrupted.set()
        for task in current:
            task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        await _soak(args, data_dir, samples, interrupted, current)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return interrupted.is_set()


async def _soak(
    args: argparse.Namespace,
    data_dir: Path,
    samples: list[Sample],
    interrupted: asyncio.Event,
    current: list[asyncio.Task[Any]],
) -> None:
    port = free_port()
    command = honar_command(
        "serve", "--port", str(port), "--data-dir", str(data_dir), log_level="INFO"
    )
    stan = default_stan_start()
    loop = asyncio.get_running_loop()
    with server_process(command, port, data_dir / SERVE_LOG, pin=None) as process:
        print(HEADER, flush=True)
        started = loop.time()
        for duration in interval_lengths(args.duration, args.interval):
            if interrupted.is_set():  # before building the interval's requests (seconds of work)
                return
            count = max(1, int(args.rate * duration))
            requests = build_requests(
                count, terminal_id=TERMINAL, members=args.members, stan_start=stan
            )
            stan = (stan + count) % 999_999 + 1
            cpu_before = cpu_seconds(process.pid)
            interval = asyncio.ensure_future(
                drive(
                    "127.0.0.1",
                    port,
                    requests,
                    connections=args.connections,
                    rate=args.rate,
                    duration_s=duration,
                    timeout_s=ANSWER_TIMEOUT_S,
                )
            )
            current[:] = [interval]
            try:
                result = await interval
            except asyncio.CancelledError:
                if interrupted.is_set():
                    return
                raise
            finally:
                current.clear()
            cpu_s = cpu_seconds(process.pid) - cpu_before
            rss, fds, threads = process_status(process.pid)
            sample = Sample(
                elapsed_s=loop.time() - started,
                answered=result.answered,
                lost=result.timed_out,
                declined=result.answered - result.approved,
                p50_ms=result.percentile_ms(50),
                p99_ms=result.percentile_ms(99),
                max_ms=result.percentile_ms(100),
                cpu_ms_per_answer=cpu_s * 1000 / max(result.answered, 1),
                rss_mib=rss,
                fds=fds,
                threads=threads,
                db_mib=_mib(data_dir / "honar.db"),
                wal_mib=_mib(data_dir / "honar.db-wal"),
            )
            samples.append(sample)
            print(row_text(sample), flush=True)


def report(samples: list[Sample], log_path: Path, *, interrupted: bool) -> int:
    """Print the summary and the switch's first error lines; the exit status."""
    errors = error_lines(log_path) if log_path.exists() else []
    if interrupted:
        print(f"interrupted after {_count(len(samples), 'interval')}")
    print(summary(samples, len(errors)))
    for line in errors[:5]:
        print(f"  {line[:300]}")
    failed = any(s.lost or s.declined for s in samples) or bool(errors) or interrupted
    return 1 if failed else 0


def interval_lengths(duration_s: float, interval_s: float) -> list[float]:
    """The intervals' lengths: whole intervals, then what is left (the build of each
    interval's requests is not counted in them).

    >>> interval_lengths(10, 3)
    [3, 3, 3, 1]
    """
    count = math.ceil(duration_s / interval_s - 1e-9)
    return [min(interval_s, duration_s - index * interval_s) for index in range(count)]


def summary(samples: list[Sample], errors: int) -> str:
    """The run in a few lines: totals, the worst interval, memory at the start and the end."""
    if not samples:
        return "no interval ran"
    answered = sum(s.answered for s in samples)
    first, last = samples[0], samples[-1]
    return "\n".join(
        [
            f"{_count(len(samples), 'interval')}, {last.elapsed_s:.0f} s: {answered:,} answered, "
            f"{sum(s.lost for s in samples):,} lost, {sum(s.declined for s in samples):,} "
            f"not 00; error lines in the switch's log: {errors}",
            f"p99 per interval: {min(s.p99_ms for s in samples):.2f}-"
            f"{max(s.p99_ms for s in samples):.2f} ms; max {max(s.max_ms for s in samples):.2f} "
            f"ms; CPU per answer {min(s.cpu_ms_per_answer for s in samples):.3f}-"
            f"{max(s.cpu_ms_per_answer for s in samples):.3f} ms",
            f"RSS {first.rss_mib:.1f} MiB after the first interval, {last.rss_mib:.1f} MiB "
            f"after the last (max {max(s.rss_mib for s in samples):.1f}); fds "
            f"{first.fds} -> {last.fds}; threads {first.threads} -> {last.threads}",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The soak's options."""
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered/s (default 1000)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per row (default 30)")
    parser.add_argument(
        "--members", type=int, default=10_000, help="synthetic members cycled (default 10000)"
    )
    parser.add_argument("--connections", type=int, default=16, help="default 16")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the ledger here (default: a temporary directory)"
    )


def check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range options with a message that names the option."""
    for name, value, low, high in (
        ("--duration", args.duration, INTERVAL_S_MIN, DURATION_S_MAX),
        ("--rate", args.rate, 1.0, RATE_MAX),
        ("--interval", args.interval, INTERVAL_S_MIN, INTERVAL_S_MAX),
        ("--members", args.members, 1, SYNTHETIC_MEMBERS_MAX),
        ("--connections", args.connections, 1, CONNECTIONS_MAX),
    ):
        if not low <= value <= high:
            raise ValueError(f"{name} must be {_number(low)}-{_number(high)}, got {value:g}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def run(args: argparse.Namespace) -> int:
    """Prepare the ledger, soak, clean up."""
    check_options(args)
    try:
        with ledger_directory(args.data_dir, "honar-soak-") as data_dir:
            prepared_s = prepare(data_dir, args.members, data_dir / "prepare.log")
            print(
                f"soak: {args.rate:g}/s offered for {args.duration:g} s in rows of "
                f"{args.interval:g} s, {args.connections} connections, synthetic members "
                f"1..{args.members:,} (ledger ready in {prepared_s:.1f} s)",
                flush=True,
            )
            samples: list[Sample] = []
            try:
                interrupted = asyncio.run(soak(args, data_dir, samples))
            except KeyboardInterrupt:  # a second Ctrl-C, or one before the soak began
                interrupted = True
            # Ctrl-C: the switch is stopped; report what was measured
            return report(samples, data_dir / SERVE_LOG, interrupted=interrupted)
    except RuntimeError as error:
        print(f"honar soak: {error}", file=sys.stderr)
        return 1


def register(commands: Any) -> None:
    """Add ``soak`` to the ``honar`` subcommands."""
    parser = commands.add_parser("soak", help="the switch under steady load for a long time")
    add_arguments(parser)
    parser.set_defaults(func=run)


if __name__ == "__main__":
    main_parser = argparse.ArgumentParser(prog="python -m scripts.soak")
    add_arguments(main_parser)
    raise SystemExit(run(main_parser.parse_args()))
