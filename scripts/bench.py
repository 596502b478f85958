"""``honar bench`` / ``python -m scripts.bench``: the switch beside the codec baseline.

One run starts two servers, each in its own process (pinned to CPU 0 when there are at least two
CPUs; the generator runs here, pinned to CPU 1):

* **baseline**: the same asyncio server, dialect and framing as the switch, whose handler only
  decodes the request and encodes a response (the echoed fields and 39 = 00): no MAC, no PIN,
  no ledger. This is the codec limit (DESIGN.md, performance targets);
* **switch**: ``python -m switch.cli serve`` on a fresh SQLite ledger in a temporary directory,
  i.e. the full path: MAC verify, PIN verify, limits, durable ledger commit, response MAC.

Each is driven by the load generator (:mod:`scripts.load`) in a closed loop after a warm-up, and
then at a fixed offered rate of 1000 requests/s (open loop). The table gives throughput, p50 and
p99 latency, the server's CPU seconds per answer (utime + stime of all its threads, from
``/proc/<pid>/stat``) and how busy it was; then the ratio full/baseline. ``--quick`` keeps the
whole run under 20 s for CI. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.load import LoadResult, build_requests, default_stan_start, drive
from switch.codec import Message, decode, encode
from switch.dialects import get_dialect
from switch.dialects.base import Framing
from switch.server import ServerLimits, SwitchServer

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
REQUESTS_PER_RUN_MAX = 200_000


@dataclass(frozen=True)
class Profile:
    """How long and how hard each phase runs."""

    warmup_s: float
    measure_s: float
    rate_s: float
    connections: int
    in_flight: int
    timeout_s: float
    rate: float = 1000.0


FULL = Profile(
    warmup_s=2.0, measure_s=10.0, rate_s=10.0, connections=16, in_flight=64, timeout_s=5.0
)
QUICK = Profile(warmup_s=0.5, measure_s=2.0, rate_s=2.0, connections=8, in_flight=32, timeout_s=2.0)


# --- the baseline server ---------------------------------------------------------------------


def baseline_handler() -> Any:
    """Decode, set 39 = 00, encode the response: the codec's share of the switch's work."""
    dialect = get_dialect("shetab87")

    async def handle(payload: bytes, peer: str) -> bytes | None:
        request = decode(payload, dialect)
        fields = {n: request.fields[n] for n in dialect.echo_fields if n in request.fields}
        fields[39] = "00"
        return encode(Message(dialect.response_mti.get(request.mti, "0210"), fields), dialect)

    return handle


async def serve_baseline(host: str, port: int) -> None:
    """Run the baseline server until SIGTERM/SIGINT."""
    server = SwitchServer(baseline_handler(), framing=Framing.ASCII4, limits=ServerLimits())
    bound = await server.start(host, port)
    print(f"baseline listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.shutdown()


# --- processes and CPU accounting ------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of process ``pid``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ", field 3 (state) is index 0: utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin_to(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def server_process(
    command: list[str], port: int, log_path: Path, *, pin: int | None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until it accepts connections, stop it (SIGTERM) after."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: _pin_to(pin)) if pin is not None else None,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{command[2:5]} exited at start:\n{tail}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not listen on port {port} in time")
                time.sleep(0.05)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# --- phases ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    server: str
    phase: str
    result: LoadResult
    cpu_s: float
    generator_cpu_s: float = 0.0

    @property
    def cpu_ms_per_answer(self) -> float:
        """Server CPU milliseconds per answer."""
        return self.cpu_s * 1000 / self.result.answered if self.result.answered else 0.0

    @property
    def cpu_busy(self) -> float:
        """Server CPU seconds per second of the run (1.0 = one core fully busy)."""
        return self.cpu_s / self.result.elapsed_s if self.result.elapsed_s else 0.0

    @property
    def generator_busy(self) -> float:
        """The generator's CPU seconds per second of the run: near 1.0, it was the limit."""
        return self.generator_cpu_s / self.result.elapsed_s if self.result.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        r = self.result
        return {
            "server": self.server,
            "phase": self.phase,
            "answered": r.answered,
            "approved": r.approved,
            "timed_out": r.timed_out,
            "throughput_per_s": round(r.throughput, 1),
            "p50_ms": round(r.percentile_ms(50), 3),
            "p99_ms": round(r.percentile_ms(99), 3),
            "max_ms": round(r.percentile_ms(100), 3),
            "cpu_ms_per_answer": round(self.cpu_ms_per_answer, 4),
            "cpu_busy": round(self.cpu_busy, 3),
            "generator_busy": round(self.generator_busy, 3),
        }


class Bench:
    """Drives one server through warm-up, closed loop and fixed-rate phases."""

    def __init__(self, profile: Profile, terminal: str) -> None:
        self.profile = profile
        self.terminal = terminal
        self.stan = default_stan_start()

    def _requests(self, count: int) -> list[bytes]:
        count = max(1, min(count, REQUESTS_PER_RUN_MAX))
        requests = build_requests(count, terminal_id=self.terminal, stan_start=self.stan)
        self.stan = (self.stan + count) % 999_999 + 1
        return requests

    async def run(self, name: str, port: int, pid: int) -> list[Row]:
        """Warm up, measure closed loop, then the fixed offered rate; return the rows."""
        p = self.profile
        warm = await drive(
            "127.0.0.1",
            port,
            self._requests(int(p.warmup_s * 10_000)),
            connections=p.connections,
            in_flight=p.in_flight,
            duration_s=p.warmup_s,
            timeout_s=p.timeout_s,
        )
        # Build enough for the measured run at the warm-up's pace, with room to speed up.
        estimate = max(warm.throughput, 200.0)
        requests = self._requests(int(estimate * p.measure_s * 1.5) + p.in_flight)
        rows = [
            await self._measure(
                name,
                f"closed {p.connections}x{p.in_flight // p.connections}",
                pid,
                port,
                requests,
                in_flight=p.in_flight,
                duration_s=p.measure_s,
            )
        ]
        requests = self._requests(int(p.rate * p.rate_s) + 1)
        rows.append(
            await self._measure(
                name,
                f"open {p.rate:g}/s",
                pid,
                port,
                requests,
                rate=p.rate,
                duration_s=p.rate_s,
            )
        )
        return rows

    async def _measure(
        self,
        name: str,
        phase: str,
        pid: int,
        port: int,
        requests: list[bytes],
        *,
        duration_s: float,
        in_flight: int | None = None,
        rate: float | None = None,
    ) -> Row:
        await asyncio.sleep(0.2)  # let the previous phase's stragglers settle
        before = cpu_seconds(pid)
        own = os.times()
        result = await drive(
            "127.0.0.1",
            port,
            requests,
            connections=self.profile.connections,
            in_flight=in_flight,
            rate=rate,
            duration_s=duration_s,
            timeout_s=self.profile.timeout_s,
        )
        server_cpu_s = cpu_seconds(pid) - before
        now = os.times()
        generator_cpu_s = now.user + now.system - own.user - own.system
        return Row(name, phase, result, server_cpu_s, generator_cpu_s)


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width table, then the full/baseline ratios."""
    head = (
        f"{'server':<9} {'phase':<14} {'answered':>9} {'approved':>9} {'lost':>6} {'per s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU ms/txn':>11} {'CPU busy':>9} "
        f"{'gen busy':>9}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        r = row.result
        lines.append(
            f"{row.server:<9} {row.phase:<14} {r.answered:>9} {r.approved:>9} {r.timed_out:>6} "
            f"{r.throughput:>8.0f} {r.percentile_ms(50):>8.2f} {r.percentile_ms(99):>8.2f} "
            f"{r.percentile_ms(100):>8.2f} {row.cpu_ms_per_answer:>11.3f} {row.cpu_busy:>9.2f} "
            f"{row.generator_busy:>9.2f}"
        )
    closed = {row.server: row for row in rows if row.phase.startswith("closed")}
    if "baseline" in closed and "switch" in closed:
        base, full = closed["baseline"], closed["switch"]
        if base.result.throughput and full.cpu_ms_per_answer:
            lines.append(
                f"full/baseline: throughput {full.result.throughput / base.result.throughput:.3f}, "
                f"CPU per answer {full.cpu_ms_per_answer / max(base.cpu_ms_per_answer, 1e-9):.1f}x"
            )
    return "\n".join(lines)


async def run_bench(args: argparse.Namespace) -> int:
    """Start both servers in turn, drive them, print the table (and JSON when asked)."""
    profile = QUICK if args.quick else FULL
    if args.connections:
        profile = Profile(**{**profile.__dict__, "connections": args.connections})
    if args.in_flight:
        profile = Profile(**{**profile.__dict__, "in_flight": args.in_flight})
    if args.rate:
        profile = Profile(**{**profile.__dict__, "rate": args.rate})
    pin = (os.cpu_count() or 1) >= 2 and not args.no_pin
    if pin:
        _pin_to(1)
    bench = Bench(profile, args.terminal)
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="honar-bench-") as temporary:
        workdir = Path(temporary)
        python = sys.executable
        which = ["baseline", "switch"] if args.only is None else [args.only]
        for name in which:
            port = free_port()
            if name == "baseline":
                command = [python, "-m", "scripts.bench", "baseline-server", "--port", str(port)]
            else:
                data_dir = workdir / "switch-data"
                command = [
                    python,
                    "-m",
                    "switch.cli",
                    "--log-level",
                    args.server_log_level,
                    "serve",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data_dir),
                ]
            log_path = workdir / f"{name}.log"
            print(f"bench: starting {name} on 127.0.0.1:{port}", file=sys.stderr, flush=True)
            with server_process(command, port, log_path, pin=0 if pin else None) as process:
                rows += await bench.run(name, port, process.pid)
    print(table(rows))
    print(
        f"(profile {'quick' if args.quick else 'full'}: warm-up {profile.warmup_s:g} s, "
        f"closed loop {profile.measure_s:g} s, {profile.rate:g}/s for {profile.rate_s:g} s; "
        f"{profile.connections} connections; switch log level {args.server_log_level}; "
        f"{'server on CPU 0, generator on CPU 1' if pin else 'not pinned'}; "
        f"{time.monotonic() - started:.1f} s in all)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``honar bench`` options."""
    parser.add_argument("--quick", action="store_true", help="short run (< 20 s) for CI")
    parser.add_argument("--connections", type=int, help="override the profile's connections")
    parser.add_argument("--in-flight", type=int, help="override the profile's requests in flight")
    parser.add_argument(
        "--rate", type=float, help="offered rate of the open-loop phase (default 1000/s)"
    )
    parser.add_argument("--only", choices=["baseline", "switch"], help="run one server only")
    parser.add_argument("--terminal", default="HNR00004", help="demo terminal id")
    parser.add_argument(
        "--server-log-level", default="INFO", help="the switch's log level (default INFO)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def register(commands: Any) -> None:
    """Add ``honar bench`` to the command line."""
    parser = commands.add_parser("bench", help="benchmark: the switch against the codec baseline")
    add_arguments(parser)
    parser.set_defaults(func=run_bench)


def main(argv: list[str] | None = None) -> int:
    """``python -m scripts.bench [baseline-server --port P | options]``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["baseline-server"]:
        server_parser = argparse.ArgumentParser(prog="python -m scripts.bench baseline-server")
        server_parser.add_argument("--host", default="127.0.0.1")
        server_parser.add_argument("--port", type=int, required=True)
        options = server_parser.parse_args(argv[1:])
        asyncio.run(serve_baseline(options.host, options.port))
        return 0
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__)
    add_arguments(parser)
    return asyncio.run(run_bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
