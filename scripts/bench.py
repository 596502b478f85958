"""``honar bench`` / ``python -m scripts.bench``: the switch beside the codec baseline.

One run starts these servers in turn, each in its own process (pinned to CPU 0 when there are at
least two CPUs; the generator runs here, pinned to CPU 1):

* **baseline**: the same asyncio server, dialect and framing as the switch, whose handler only
  decodes the request and encodes a response (the echoed fields and 39 = 00): no MAC, no PIN,
  no ledger. This is the codec limit (DESIGN.md, performance targets);
* **switch**: ``python -m switch.cli serve`` on a fresh SQLite ledger in a temporary directory,
  i.e. the full path: MAC verify, PIN verify, limits, durable ledger commit, response MAC;
* **switch-pg**: the same switch on a fresh PostgreSQL database (created through
  ``--pg-admin-url``, dropped afterwards; PostgreSQL itself is not pinned);
* **2x switch-pg**: two switch processes sharing one fresh PostgreSQL database, both on CPU 0,
  driven at the same time (closed loop only) by two generators here: terminal HNR00004 with
  demo card M0006 (as the phases above) and terminal HNR00002 with synthetic members 1..N
  (loaded by ``honar demo synthetic``), so that no card, terminal or merchant is shared. One row
  per process and their sum.

Each is driven by the load generator (:mod:`scripts.load`) in a closed loop after a warm-up
(64 in flight), in a second closed loop that saturates the server (256 in flight: at 64 the
switch idles while a batch's commit is on the disk), and then at a fixed offered rate of 1000
requests/s (open loop). The table gives throughput, p50 and
p99 latency, the server's CPU seconds per answer (utime + stime of all its threads, from
``/proc/<pid>/stat``) and how busy it was; then the ratios. When PostgreSQL cannot be reached its
rows are skipped with one line on stderr (an error under CI=true); ``--no-postgres`` skips them.
``--quick`` keeps the whole run under about 45 s for CI. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scripts.crash_test import fresh_database
from scripts.load import LoadResult, build_requests, default_stan_start, drive
from switch.codec import Message, decode, decode_plain, encode, encode_plain
from switch.dialects import get_dialect
from switch.dialects.base import Framing
from switch.server import ServerLimits, SwitchServer

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
REQUESTS_PER_RUN_MAX = 200_000
PG_ADMIN_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
SATURATED_IN_FLIGHT_MAX = 4096
PG_CONNECT_TIMEOUT_S = 5  # reaching the PostgreSQL server before its phases
PG_PREPARE_TIMEOUT_S = 180.0  # migrations, demo data and synthetic members on a fresh database
SYNTHETIC_MEMBERS_MAX = 100_000  # --members: the cards of p2, 2nd generator of "2x switch-pg"
SHARED_PG_PROCESSES = 2  # switch processes sharing one database in "2x switch-pg"
# The two generators of "2x switch-pg": terminal HNR00004 with demo card M0006, terminal HNR00002
# with synthetic members 1..N (no card, terminal totals row or merchant shared). Not HNR00001:
# its hotel rule (HOTEL20, uses counted per member) makes each purchase about twice the work.
PAIR_TERMINALS = ("HNR00004", "HNR00002")
SERVERS = ("baseline", "switch", "switch-pg", "2x-switch-pg")
PAIR_SERVER = "2x-switch-pg"
PAIR_NAME = "2xpg"  # its rows: 2xpg/p1, 2xpg/p2, 2xpg/sum
PG_SERVERS = frozenset({"switch-pg", PAIR_SERVER})


@dataclass(frozen=True)
class Profile:
    """How long and how hard each phase runs."""

    warmup_s: float
    measure_s: float
    rate_s: float
    connections: int
    in_flight: int
    timeout_s: float
    members: int
    rate: float = 1000.0
    # A second closed loop, this many in flight, to show the server saturated (0: none). At
    # 64 in flight the switch idles while a batch's commit is on the disk (busy 0.8-0.9).
    saturated_in_flight: int = 0


FULL = Profile(
    warmup_s=2.0,
    measure_s=10.0,
    rate_s=10.0,
    connections=16,
    in_flight=64,
    timeout_s=5.0,
    members=2000,
    saturated_in_flight=256,
)
QUICK = Profile(
    warmup_s=0.5,
    measure_s=2.0,
    rate_s=2.0,
    connections=8,
    in_flight=32,
    timeout_s=2.0,
    members=200,
    saturated_in_flight=128,
)


# --- the baseline server ---------------------------------------------------------------------


BASELINE_CODECS = ("switch", "pyiso8583")


def baseline_handler(codec: str = "switch") -> Any:
    """Decode, set 39 = 00, encode the response: the codec's share of the switch's work.

    ``codec`` "switch" is the switch's own codec (:mod:`switch.codec`, the baseline of record);
    "pyiso8583" calls pyiso8583's ``decode``/``encode`` on the same dialect's spec directly,
    the codec that DESIGN.md's figures and reference/python-peers.md were measured with. Both
    answer a valid request with the same bytes (a test holds them to it)."""
    dialect = get_dialect("shetab87")
    if codec == "pyiso8583":
        echo = [str(number) for number in sorted(dialect.echo_fields)]

        async def handle_pyiso(payload: bytes, peer: str) -> bytes | None:
            request = decode_plain(payload, dialect)
            fields = {key: request[key] for key in echo if key in request}
            fields["t"] = dialect.response_mti.get(request["t"], "0210")
            fields["39"] = "00"
            return encode_plain(fields, dialect)

        return handle_pyiso
    if codec != "switch":
        raise ValueError(
            f"baseline codec must be one of {', '.join(BASELINE_CODECS)}, got {codec!r}"
        )

    async def handle(payload: bytes, peer: str) -> bytes | None:
        request = decode(payload, dialect)
        fields = {n: request.fields[n] for n in dialect.echo_fields if n in request.fields}
        fields[39] = "00"
        return encode(Message(dialect.response_mti.get(request.mti, "0210"), fields), dialect)

    return handle


async def serve_baseline(host: str, port: int, codec: str = "switch") -> None:
    """Run the baseline server until SIGTERM/SIGINT."""
    server = SwitchServer(baseline_handler(codec), framing=Framing.ASCII4, limits=ServerLimits())
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


def stat_cpu_seconds(stat_file: str) -> float:
    """User + system CPU seconds in a Linux ``/proc/.../stat`` file (a process or a thread)."""
    text = Path(stat_file).read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ", field 3 (state) is index 0: utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of process ``pid``."""
    return stat_cpu_seconds(f"/proc/{pid}/stat")


def _pin_to(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {cpu})


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prepare_child(pin: int | None) -> None:
    """In a server process before it runs: pinned to a CPU when asked, and sent SIGTERM when
    the tool that started it dies, even by SIGKILL, so that no server is left behind (Linux;
    elsewhere the tool's own SIGTERM at its end is all there is)."""
    if pin is not None:
        _pin_to(pin)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def server_process(
    command: list[str], port: int, log_path: Path, *, pin: int | None, poll_s: float = 0.05
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until it accepts connections (trying every ``poll_s``),
    stop it (SIGTERM) after."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _prepare_child(pin),
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{' '.join(command[2:])} exited at start:\n{tail}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not listen on port {port} in time")
                time.sleep(poll_s)
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

    def __init__(self, profile: Profile, terminal: str, *, members: int = 0) -> None:
        self.profile = profile
        self.terminal = terminal
        self.members = members  # 0: demo card M0006; N: synthetic members 1..N
        self.stan = default_stan_start()

    @property
    def closed_phase(self) -> str:
        """The closed-loop phase's name in the table, e.g. ``closed 8x4``."""
        p = self.profile
        return f"closed {p.connections}x{p.in_flight // p.connections}"

    @property
    def saturated_phase(self) -> str:
        """The saturated closed loop's name in the table, e.g. ``closed 16x16``."""
        p = self.profile
        return f"closed {p.connections}x{p.saturated_in_flight // p.connections}"

    def _requests(self, count: int) -> list[bytes]:
        count = max(1, min(count, REQUESTS_PER_RUN_MAX))
        requests = build_requests(
            count, terminal_id=self.terminal, members=self.members, stan_start=self.stan
        )
        self.stan = (self.stan + count) % 999_999 + 1
        return requests

    async def warm_up(self, port: int) -> list[bytes]:
        """Drive the warm-up; return the requests for the closed loop, built at its pace."""
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
        return self._requests(int(estimate * p.measure_s * 1.5) + p.in_flight)

    async def run(self, name: str, port: int, pid: int) -> list[Row]:
        """Warm up, measure closed loop, then the fixed offered rate; return the rows."""
        p = self.profile
        requests = await self.warm_up(port)
        rows = [
            await self._measure(
                name,
                self.closed_phase,
                pid,
                port,
                requests,
                in_flight=p.in_flight,
                duration_s=p.measure_s,
            )
        ]
        if p.saturated_in_flight:
            pace = max(rows[0].result.throughput, 200.0) * 1.5  # room to speed up
            requests = self._requests(int(pace * p.measure_s) + p.saturated_in_flight)
            rows.append(
                await self._measure(
                    name,
                    self.saturated_phase,
                    pid,
                    port,
                    requests,
                    in_flight=p.saturated_in_flight,
                    duration_s=p.measure_s,
                )
            )
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
        own = cpu_seconds(os.getpid())
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
        generator_cpu_s = cpu_seconds(os.getpid()) - own
        return Row(name, phase, result, server_cpu_s, generator_cpu_s)


async def run_pair(benches: list[Bench], targets: list[tuple[int, int]], name: str) -> list[Row]:
    """Warm up and measure closed loop on several servers at once, one generator each.

    ``targets`` are (port, pid) pairs, in the order of ``benches``. Returns one row per server
    (its own CPU and answers) and a last row ``<name>/sum``: the answers of all, their latencies
    merged, and the CPU of all servers over all answers. The generator column is this process's
    CPU (all generators together) in every row.
    """
    if len(benches) != len(targets) or not benches:
        raise ValueError(f"run_pair: {len(benches)} generators for {len(targets)} servers")
    profile = benches[0].profile
    requests = await asyncio.gather(
        *(bench.warm_up(port) for bench, (port, _pid) in zip(benches, targets, strict=True))
    )
    await asyncio.sleep(0.2)  # let the warm-up's stragglers settle
    before = [cpu_seconds(pid) for _port, pid in targets]
    own = cpu_seconds(os.getpid())
    results = await asyncio.gather(
        *(
            drive(
                "127.0.0.1",
                port,
                batch,
                connections=profile.connections,
                in_flight=profile.in_flight,
                duration_s=profile.measure_s,
                timeout_s=profile.timeout_s,
            )
            for batch, (port, _pid) in zip(requests, targets, strict=True)
        )
    )
    server_cpu = [
        cpu_seconds(pid) - start for start, (_port, pid) in zip(before, targets, strict=True)
    ]
    generator_cpu_s = cpu_seconds(os.getpid()) - own
    phase = benches[0].closed_phase
    rows = [
        Row(f"{name}/p{index + 1}", phase, result, cpu, generator_cpu_s)
        for index, (result, cpu) in enumerate(zip(results, server_cpu, strict=True))
    ]
    rows.append(Row(f"{name}/sum", phase, merge_results(results), sum(server_cpu), generator_cpu_s))
    return rows


def merge_results(results: list[LoadResult]) -> LoadResult:
    """Results of generators that ran at the same time, as one: counts added, latencies merged,
    the elapsed time the longest of them (so the throughput is the sum's)."""
    first = results[0]
    codes: Counter[str] = Counter()
    for result in results:
        codes.update(result.codes)
    return replace(
        first,
        connections=sum(r.connections for r in results),
        in_flight=sum(r.in_flight or 0 for r in results) or None,
        built=sum(r.built for r in results),
        sent=sum(r.sent for r in results),
        answered=sum(r.answered for r in results),
        timed_out=sum(r.timed_out for r in results),
        codes=codes,
        elapsed_s=max(r.elapsed_s for r in results),
        latencies_ns=sorted(value for r in results for value in r.latencies_ns),
        per_second=[],
        errors=[error for r in results for error in r.errors],
    )


# --- PostgreSQL --------------------------------------------------------------------------------


def honar_command(*arguments: str, log_level: str = "WARNING") -> list[str]:
    """``python -m switch.cli --log-level LEVEL ARGUMENTS``: a ``honar`` command run as a child
    process with this interpreter (the benchmarks' servers and set-up steps)."""
    return [sys.executable, "-m", "switch.cli", "--log-level", log_level, *arguments]


def postgres_unreachable(admin_url: str) -> str | None:
    """Why the PostgreSQL server at ``admin_url`` cannot be used, or None when it can."""
    try:
        import psycopg
    except ImportError as error:
        return f"psycopg is not installed ({error})"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S):
            return None
    except psycopg.Error as error:
        first = str(error).strip().splitlines()
        return first[0] if first else type(error).__name__


def prepare_ledger(
    url: str, members: int, log_path: Path, *, timeout_s: float = PG_PREPARE_TIMEOUT_S
) -> None:
    """Migrate the database at ``url``, load the demo data and synthetic members 1..``members``
    (``honar demo synthetic``), so that several switch processes can start on it at once."""
    command = honar_command("demo", "synthetic", "--members", str(members), "--ledger-url", url)
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(
                f"honar demo synthetic --members {members} took more than "
                f"{timeout_s:g} s; see {log_path}"
            ) from error
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"honar demo synthetic --members {members} exited with {done.returncode}:\n{tail}"
        )


def switch_command(port: int, data_dir: Path, log_level: str, ledger_url: str = "") -> list[str]:
    """``python -m switch.cli serve`` on ``port`` (SQLite in ``data_dir`` or ``ledger_url``)."""
    command = honar_command(
        "serve", "--port", str(port), "--data-dir", str(data_dir), log_level=log_level
    )
    if ledger_url:
        command += ["--ledger-url", ledger_url]
    return command


def table(rows: list[Row], baseline_codec: str = "switch") -> str:
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
    closed: dict[str, Row] = {}  # each server's first closed loop (the saturated one follows)
    saturated: dict[str, Row] = {}
    for row in rows:
        if row.phase.startswith("closed"):
            if row.server in closed:
                saturated[row.server] = row
            else:
                closed[row.server] = row
    if "baseline" in closed and "switch" in closed:
        base, full = closed["baseline"], closed["switch"]
        if base.result.throughput and full.cpu_ms_per_answer:
            lines.append(
                f"full/baseline: throughput {full.result.throughput / base.result.throughput:.3f}, "
                f"CPU per answer {full.cpu_ms_per_answer / max(base.cpu_ms_per_answer, 1e-9):.1f}x"
                + ("" if baseline_codec == "switch" else f" (baseline codec {baseline_codec})")
            )
    if "switch" in saturated:
        row = saturated["switch"]
        approved_per_s = row.result.approved / max(row.result.elapsed_s, 1e-9)
        lines.append(
            f"switch saturated ({row.phase.split()[1]}): {approved_per_s:.0f} approved/s at "
            f"{row.cpu_ms_per_answer:.3f} ms CPU each, busy {row.cpu_busy:.2f}"
        )
    if "switch-pg" in closed:
        pg = closed["switch-pg"]
        text = f"PostgreSQL: one process {pg.result.throughput:.0f}/s"
        if "switch" in closed and closed["switch"].result.throughput:
            text += f" ({pg.result.throughput / closed['switch'].result.throughput:.2f} x SQLite)"
        pair = closed.get(f"{PAIR_NAME}/sum")
        if pair is not None:
            text += (
                f"; {SHARED_PG_PROCESSES} processes sharing the database "
                f"{pair.result.throughput:.0f}/s in sum"
            )
            if pg.result.throughput:
                text += f" ({pair.result.throughput / pg.result.throughput:.2f} x one process)"
        lines.append(text)
    return "\n".join(lines)


def postgres_gate(args: argparse.Namespace, which: list[str]) -> tuple[bool, str]:
    """Whether the PostgreSQL phases run, and a note for the footer.

    Unreachable: one line on stderr and (False, note); under CI=true a RuntimeError instead.
    """
    wanted = [name for name in which if name in PG_SERVERS]
    if not wanted:
        return False, ""
    if args.no_postgres:
        return False, "PostgreSQL rows skipped (--no-postgres)"
    reason = postgres_unreachable(args.pg_admin_url)
    if reason is None:
        return True, ""
    where = _without_password(args.pg_admin_url)
    if os.environ.get("CI") == "true":
        raise RuntimeError(
            f"PostgreSQL was required (CI=true) but {where} cannot be reached: {reason}"
        )
    print(
        f"bench: PostgreSQL rows skipped: {where} cannot be reached ({reason}); "
        "start PostgreSQL, pass --pg-admin-url, or --no-postgres to silence this",
        file=sys.stderr,
        flush=True,
    )
    return False, f"PostgreSQL rows skipped: {where} cannot be reached"


def _without_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


def check_options(args: argparse.Namespace) -> str | None:
    """The first problem with the options, naming the option, or None."""
    if not args.pg_admin_url.startswith("postgresql://"):
        scheme = args.pg_admin_url.partition("://")[0] or args.pg_admin_url[:20]
        return f"--pg-admin-url must be a postgresql:// URL, got scheme {scheme!r}"
    if args.members is not None and not 1 <= args.members <= SYNTHETIC_MEMBERS_MAX:
        return f"--members must be 1-{SYNTHETIC_MEMBERS_MAX}, got {args.members}"
    saturated = args.saturated_in_flight
    if saturated is not None and not 0 <= saturated <= SATURATED_IN_FLIGHT_MAX:
        return f"--saturated-in-flight must be 0-{SATURATED_IN_FLIGHT_MAX}, got {saturated}"
    return None


async def run_bench(args: argparse.Namespace) -> int:
    """Start the servers in turn, drive them, print the table (and JSON when asked)."""
    problem = check_options(args)
    if problem is not None:
        print(f"honar bench: {problem}", file=sys.stderr)
        return 2
    profile = QUICK if args.quick else FULL
    if args.connections:
        profile = replace(profile, connections=args.connections)
    if args.in_flight:
        profile = replace(profile, in_flight=args.in_flight)
    if args.saturated_in_flight is not None:
        profile = replace(profile, saturated_in_flight=args.saturated_in_flight)
    if args.rate:
        profile = replace(profile, rate=args.rate)
    if args.members:
        profile = replace(profile, members=args.members)
    which = list(SERVERS) if args.only is None else [args.only]
    try:
        postgres, pg_note = postgres_gate(args, which)
    except RuntimeError as error:
        print(f"honar bench: {error}", file=sys.stderr)
        return 1
    if not postgres:
        which = [name for name in which if name not in PG_SERVERS]
    pin = (os.cpu_count() or 1) >= 2 and not args.no_pin
    if pin:
        _pin_to(1)
    cpu = 0 if pin else None
    bench = Bench(profile, args.terminal)
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="honar-bench-") as temporary:
        workdir = Path(temporary)
        for name in which:
            if name == PAIR_SERVER:
                rows += await _run_shared_postgres(args, profile, workdir, cpu)
                continue
            port = free_port()
            with contextlib.ExitStack() as stack:
                if name == "baseline":
                    command = [
                        sys.executable,
                        "-m",
                        "scripts.bench",
                        "baseline-server",
                        "--port",
                        str(port),
                        "--codec",
                        args.baseline_codec,
                    ]
                elif name == "switch":
                    command = switch_command(port, workdir / name, args.server_log_level)
                else:
                    url = stack.enter_context(fresh_database(args.pg_admin_url))
                    command = switch_command(port, workdir / name, args.server_log_level, url)
                print(f"bench: starting {name} on 127.0.0.1:{port}", file=sys.stderr, flush=True)
                process = stack.enter_context(
                    server_process(command, port, workdir / f"{name}.log", pin=cpu)
                )
                rows += await bench.run(name, port, process.pid)
    print(table(rows, args.baseline_codec))
    placement = "server on CPU 0, generator on CPU 1" if pin else "not pinned"
    if postgres:
        placement += ", PostgreSQL not pinned"
    print(
        f"(profile {'quick' if args.quick else 'full'}: warm-up {profile.warmup_s:g} s, "
        f"closed loop {profile.measure_s:g} s with {profile.in_flight} in flight"
        + (f" and again with {profile.saturated_in_flight}" if profile.saturated_in_flight else "")
        + f", {profile.rate:g}/s for {profile.rate_s:g} s; "
        f"{profile.connections} connections; switch log level {args.server_log_level}; "
        f"{placement}; {time.monotonic() - started:.1f} s in all)"
    )
    if postgres and PAIR_SERVER in which:
        print(
            f"({PAIR_NAME}: {SHARED_PG_PROCESSES} switch processes on one PostgreSQL database, "
            f"both on {'CPU 0' if pin else 'any CPU'}, closed loop at the same time; "
            f"p1 terminal {PAIR_TERMINALS[0]} with M0006, p2 terminal {PAIR_TERMINALS[1]} with "
            f"synthetic members 1..{profile.members}; sum CPU ms/txn = both processes' CPU "
            "over both processes' answers)"
        )
    if pg_note:
        print(f"({pg_note})")
    if args.json:
        Path(args.json).write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
    return 0


async def _run_shared_postgres(
    args: argparse.Namespace, profile: Profile, workdir: Path, cpu: int | None
) -> list[Row]:
    """The "2x switch-pg" phase: prepare a fresh database, start the processes, drive them."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_database(args.pg_admin_url))
        print(
            f"bench: loading demo data and {profile.members} synthetic members into PostgreSQL",
            file=sys.stderr,
            flush=True,
        )
        prepare_ledger(url, profile.members, workdir / f"{PAIR_SERVER}-prepare.log")
        targets: list[tuple[int, int]] = []
        for index in range(SHARED_PG_PROCESSES):
            port = free_port()
            name = f"{PAIR_SERVER}-{index + 1}"
            print(f"bench: starting {name} on 127.0.0.1:{port}", file=sys.stderr, flush=True)
            command = switch_command(port, workdir / name, args.server_log_level, url)
            process = stack.enter_context(
                server_process(command, port, workdir / f"{name}.log", pin=cpu)
            )
            targets.append((port, process.pid))
        benches = [
            Bench(profile, PAIR_TERMINALS[0]),
            Bench(profile, PAIR_TERMINALS[1], members=profile.members),
        ]
        return await run_pair(benches, targets, PAIR_NAME)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``honar bench`` options."""
    parser.add_argument("--quick", action="store_true", help="short run (< 45 s) for CI")
    parser.add_argument("--connections", type=int, help="override the profile's connections")
    parser.add_argument("--in-flight", type=int, help="override the profile's requests in flight")
    parser.add_argument(
        "--saturated-in-flight",
        type=int,
        help="in flight in the second, saturated closed loop (default 256, --quick 128; 0: none)",
    )
    parser.add_argument(
        "--rate", type=float, help="offered rate of the open-loop phase (default 1000/s)"
    )
    parser.add_argument("--only", choices=SERVERS, help="run one server (or phase) only")
    parser.add_argument(
        "--baseline-codec",
        choices=BASELINE_CODECS,
        default="switch",
        help="the baseline server's codec: the switch's own (default), or pyiso8583 called "
        "directly, for comparison with DESIGN.md's figures",
    )
    parser.add_argument("--terminal", default="HNR00004", help="demo terminal id")
    parser.add_argument(
        "--server-log-level", default="INFO", help="the switch's log level (default INFO)"
    )
    parser.add_argument(
        "--pg-admin-url",
        default=PG_ADMIN_URL_DEFAULT,
        help="PostgreSQL server where fresh databases are created and dropped "
        f"(default {PG_ADMIN_URL_DEFAULT})",
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip the switch-pg and 2x-switch-pg phases"
    )
    parser.add_argument(
        "--members",
        type=int,
        help=f"synthetic members for 2x-switch-pg (1-{SYNTHETIC_MEMBERS_MAX}; "
        f"default {FULL.members}, quick {QUICK.members})",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def register(commands: Any) -> None:
    """Add ``honar bench`` to the command line."""
    parser = commands.add_parser(
        "bench", help="benchmark: the switch (SQLite, PostgreSQL) against the codec baseline"
    )
    add_arguments(parser)
    parser.set_defaults(func=run_bench)


def main(argv: list[str] | None = None) -> int:
    """``python -m scripts.bench [baseline-server --port P | options]``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["baseline-server"]:
        server_parser = argparse.ArgumentParser(prog="python -m scripts.bench baseline-server")
        server_parser.add_argument("--host", default="127.0.0.1")
        server_parser.add_argument("--port", type=int, required=True)
        server_parser.add_argument("--codec", choices=BASELINE_CODECS, default="switch")
        options = server_parser.parse_args(argv[1:])
        asyncio.run(serve_baseline(options.host, options.port, options.codec))
        return 0
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__)
    add_arguments(parser)
    return asyncio.run(run_bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
