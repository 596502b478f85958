"""``honar path-bench`` / ``python -m scripts.path_bench``: the switch's own CPU per purchase.

The network is left out: requests built by the load generator are handed straight to
:meth:`switch.service.Service.handle` (decode, MAC, PIN, rules, durable commit, response MAC,
log line, metrics) on a fresh SQLite ledger with the demo data, ``--in-flight`` at a time. The
figures are CPU microseconds per purchase, split into the event loop's thread and the ledger's
commit thread (from ``/proc/self/task/<tid>/stat``), plus the commit batches' mean size. The
machine's noise moves wall-clock throughput by tens of percent between runs; CPU per purchase
moves much less, which is what makes this the tool for comparing one change with the next.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from scripts.bench import stat_cpu_seconds
from scripts.load import build_requests, default_stan_start
from switch.config import Config, LedgerConfig, SwitchConfig

REQUESTS_MAX = 200_000


def thread_cpu_s(native_id: int) -> float:
    """user + system CPU seconds of one thread of this process (Linux /proc)."""
    return stat_cpu_seconds(f"/proc/self/task/{native_id}/stat")


async def drive_handler(
    handle: Callable[[bytes, str], Awaitable[bytes | None]], payloads: list[bytes], in_flight: int
) -> float:
    """Hand ``payloads`` to ``handle`` (a :class:`switch.service.Service`'s ``handle``, or a
    server handler of the same shape), ``in_flight`` at a time; the seconds it took. Raises
    RuntimeError unless every request was answered."""
    queue = iter(payloads)
    codes: dict[str, int] = {}

    async def worker() -> None:
        for payload in queue:
            answer = await handle(payload, "bench")
            if answer is None:
                codes["none"] = codes.get("none", 0) + 1
            else:
                codes["answered"] = codes.get("answered", 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    if codes.get("answered", 0) != len(payloads):
        raise RuntimeError(f"not every request was answered: {codes}")
    return elapsed


def run(
    count: int, in_flight: int, warmup: int, log_level: str, terminal: str = "HNR00004"
) -> dict[str, Any]:
    """Build a switch on a fresh ledger, push ``count`` purchases through it, measure."""
    stan = default_stan_start()
    warm = build_requests(warmup, terminal_id=terminal, stan_start=stan)
    payloads = build_requests(count, terminal_id=terminal, stan_start=stan + warmup)
    return measure(warm, payloads, in_flight, log_level)


def measure(
    warm: list[bytes], payloads: list[bytes], in_flight: int, log_level: str
) -> dict[str, Any]:
    """Push the pre-built ``warm`` requests, then ``payloads``, through a switch on a fresh
    ledger with the demo data; measure the second part. The requests are built by the caller,
    so that their building (a PIN block and a MAC each) is not counted with the switch."""
    if not payloads:
        raise ValueError("path_bench: no requests to measure")
    from switch.app import build_app
    from switch.logs import setup_logging

    setup_logging(log_level, buffered=True)  # as the server does
    # the log lines are part of the cost; where they go is not
    logging.getLogger().handlers[0].stream = open(os.devnull, "w")  # type: ignore[attr-defined]  # noqa: SIM115
    with tempfile.TemporaryDirectory(prefix="honar-path-") as directory:
        config = replace(
            Config(data_dir=directory),
            switch=replace(SwitchConfig(), port=0),
            ledger=LedgerConfig(url=""),
        )
        app = build_app(config)
        try:
            service = app.service

            def handle(payload: bytes, peer: str) -> Awaitable[bytes | None]:
                return service.handle(payload, peer=peer)  # as switch.app's server calls it

            asyncio.run(drive_handler(handle, warm, in_flight))
            loop_id = threading.get_native_id()
            commit_id = app.committer._worker.native_id or 0
            batches0 = app.committer.batches
            cpu0 = thread_cpu_s(loop_id), thread_cpu_s(commit_id)
            elapsed = asyncio.run(drive_handler(handle, payloads, in_flight))
            cpu1 = thread_cpu_s(loop_id), thread_cpu_s(commit_id)
            batches = app.committer.batches - batches0  # one job per purchase
        finally:
            app.close()
    count = len(payloads)
    return {
        "purchases": count,
        "in_flight": in_flight,
        "per_s": round(count / elapsed),
        "loop_us": round((cpu1[0] - cpu0[0]) / count * 1e6),
        "commit_us": round((cpu1[1] - cpu0[1]) / count * 1e6),
        "total_us": round((cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1]) / count * 1e6),
        "batch_mean": round(count / batches, 1) if batches else 0.0,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("--count", type=int, default=20_000, help="purchases (default 20000)")
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent requests")
    parser.add_argument("--warmup", type=int, default=2_000, help="purchases before measuring")
    parser.add_argument("--repeat", type=int, default=1, help="runs (each on a fresh ledger)")
    parser.add_argument("--terminal", default="HNR00004", help="demo terminal (default HNR00004)")
    parser.add_argument("--log-level", default="INFO", help="switch log level (default INFO)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")


def main_with(args: argparse.Namespace) -> int:
    """Run and print."""
    for name, value, low, high in (
        ("--count", args.count, 1, REQUESTS_MAX),
        ("--warmup", args.warmup, 1, REQUESTS_MAX),
        ("--in-flight", args.in_flight, 1, 4096),
        ("--repeat", args.repeat, 1, 100),
    ):
        if not low <= value <= high:
            raise ValueError(f"{name} must be {low}-{high}, got {value}")
    print(
        f"{'purchases':>9} {'in flight':>9} {'per s':>7} {'loop µs':>8} {'commit µs':>9} "
        f"{'total µs':>8} {'batch':>6}"
    )
    for _ in range(args.repeat):
        row = run(args.count, args.in_flight, args.warmup, args.log_level, args.terminal)
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['purchases']:>9} {row['in_flight']:>9} {row['per_s']:>7} "
                f"{row['loop_us']:>8} {row['commit_us']:>9} {row['total_us']:>8} "
                f"{row['batch_mean']:>6}"
            )
    return 0


def register(commands: Any) -> None:
    """Add ``honar path-bench``."""
    parser = commands.add_parser(
        "path-bench", help="CPU per purchase in the switch itself, without the network"
    )
    add_arguments(parser)
    parser.set_defaults(func=main_with)


if __name__ == "__main__":
    main_parser = argparse.ArgumentParser(prog="python -m scripts.path_bench")
    add_arguments(main_parser)
    raise SystemExit(main_with(main_parser.parse_args()))
