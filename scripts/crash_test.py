"""Crash consistency: load a real ``honar serve``, SIGKILL it at random moments, check the ledger.

    python -m scripts.crash_test                      # 20 kills, SQLite in a temporary folder
    python -m scripts.crash_test --kills 30 --seed 7
    python -m scripts.crash_test --pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres
    python -m scripts.crash_test --ledger-url postgresql+psycopg://postgres@127.0.0.1:5432/db

Several connections (one asyncio task each, speaking as demo terminals through
:class:`scripts.pos.PosTerminal`) send purchases, balance inquiries, reversals of approved
purchases and retransmissions of earlier requests (byte for byte). A killer task sends SIGKILL to
the server after a random delay (seeded), waits for it to die and starts it again on the same
port and ledger. A request whose connection broke is retransmitted unchanged on the next
connection, as a terminal does. After the last kill the load runs a little longer, the server is
stopped with SIGTERM, and the ledger is opened directly to check:

* every approval a terminal received is a ``transactions`` row with response ``00`` and its
  transfers (losses = approvals received but missing);
* no request key was stored twice and each retransmission got the original answer back;
* debits equal credits (posted and pending) and agree with the journal; the journal hash chain
  verifies;
* no transaction has more reversed or refunded than its amount; every approved reversal left
  its original reversed;
* every stored decision has its outbox event.

It prints a summary table and exits 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 5.0

# (PAN, PIN, weight): M0006 has the funds and limits for load; M0002 runs out and is declined.
CARDS = (("6362144899564327", "9876", 8), ("6362149173324546", "4321", 2))
TDES_TERMINALS = ("HNR00004", "HNR00001", "HNR00002")
DUKPT_TERMINAL = "HNR00003"


@dataclass
class CrashOptions:
    """What to run: kills, load shape, ledger, seed."""

    kills: int = 20
    seed: int = 1
    connections: int = 6
    kill_delay_min_s: float = 0.2
    kill_delay_max_s: float = 1.5
    settle_s: float = 2.0  # load after the last restart, before the final stop
    ledger_url: str = ""  # empty: SQLite in the data folder
    data_dir: str = ""  # empty: a temporary folder
    python: str = sys.executable
    time_max_s: float = 600.0
    verbose: bool = False


@dataclass
class Sent:
    """One request as the terminal sent it, and what came back (None: no answer yet)."""

    kind: str
    tid: str
    stan: str
    transmission: str
    payload: bytes
    amount: int = 0
    response_code: str | None = None
    rrn: str | None = None
    auth_id: str | None = None
    original: Sent | None = None  # for reversals: the purchase reversed


@dataclass
class CrashReport:
    """Figures and findings of one run; ``ok`` when nothing is lost, doubled or unbalanced."""

    ledger: str = ""
    kills: int = 0
    restarts: int = 0
    restart_s_max: float = 0.0
    requests_sent: int = 0
    responses: int = 0
    broken_by_kill: int = 0
    retransmissions: int = 0
    retransmission_mismatches: int = 0
    approvals_received: int = 0
    approvals_found: int = 0
    reversals_approved: int = 0
    losses: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    transactions: int = 0
    transfers: int = 0
    duplicate_keys: int = 0
    outbox_missing: int = 0
    debits_posted: int = 0
    credits_posted: int = 0
    balanced: bool = False
    journal_ok: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return (
            not self.losses
            and not self.problems
            and self.retransmission_mismatches == 0
            and self.duplicate_keys == 0
            and self.outbox_missing == 0
            and self.balanced
            and self.journal_ok
        )

    def table(self) -> str:
        """The summary as aligned rows."""
        rows = [
            ("ledger", self.ledger),
            ("SIGKILLs", self.kills),
            ("restarts", self.restarts),
            ("slowest restart (s)", f"{self.restart_s_max:.2f}"),
            ("requests sent", self.requests_sent),
            ("responses received", self.responses),
            ("requests cut by a kill", self.broken_by_kill),
            ("retransmissions", self.retransmissions),
            ("retransmission answers differing", self.retransmission_mismatches),
            ("approvals received", self.approvals_received),
            ("approvals found in ledger", self.approvals_found),
            ("reversals approved", self.reversals_approved),
            ("losses", len(self.losses)),
            ("request keys stored twice", self.duplicate_keys),
            ("transactions stored", self.transactions),
            ("transfers stored", self.transfers),
            ("decisions without outbox event", self.outbox_missing),
            ("debits posted", f"{self.debits_posted:,}"),
            ("credits posted", f"{self.credits_posted:,}"),
            ("debits = credits = journal", self.balanced),
            ("journal hash chain verifies", self.journal_ok),
            ("other problems", len(self.problems)),
            ("elapsed (s)", f"{self.elapsed_s:.1f}"),
            ("result", "OK" if self.ok else "FAILED"),
        ]
        width = max(len(name) for name, _value in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"LOST: {loss}" for loss in self.losses[:20]]
        lines += [f"PROBLEM: {problem}" for problem in self.problems[:20]]
        return "\n".join(lines)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m switch.cli serve`` on a fixed port and ledger, killed and restarted at will."""

    def __init__(
        self,
        *,
        port: int,
        data_dir: Path,
        ledger_url: str,
        python: str,
        log_path: Path,
        global_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.data_dir = data_dir
        self.ledger_url = ledger_url
        self.python = python
        self.log_path = log_path
        self.global_args = global_args  # before "serve", e.g. ("--config", path)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        """The command line that starts the server."""
        command = [self.python, "-m", "switch.cli", *self.global_args, "serve"]
        command += ["--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.ledger_url:
            command += ["--ledger-url", self.ledger_url]
        return command

    def start(self) -> float:
        """Start and wait until it accepts connections; return how long that took."""
        assert self.process is None or self.process.poll() is not None
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=ROOT, stdout=log, stderr=log, env=env
            )
        self.starts += 1
        while time.monotonic() - started < START_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode} at start; see {self.log_path}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return time.monotonic() - started
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server did not listen within {START_TIMEOUT_S} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> int:
        """SIGTERM (graceful shutdown) and wait; SIGKILL if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else int(self.process.returncode)
        self.process.send_signal(signal.SIGTERM)
        try:
            return int(self.process.wait(30))
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


class _Load:
    """The terminals' side: what was sent and received, shared by the worker tasks."""

    def __init__(self, options: CrashOptions, port: int, report: CrashReport) -> None:
        from scripts.pos import PosTerminal

        self.options = options
        self.port = port
        self.report = report
        self.rng = random.Random(options.seed)
        self.terminals = {tid: PosTerminal.demo(tid) for tid in (*TDES_TERMINALS, DUKPT_TERMINAL)}
        self.answered: list[Sent] = []
        self.approved_purchases: list[Sent] = []
        self.reversed: set[int] = set()
        self.sent: list[Sent] = []
        self.stop = asyncio.Event()

    def _new(self, tid: str, kind: str, payload: bytes, amount: int = 0) -> Sent:
        terminal = self.terminals[tid]
        message = terminal.read(payload)
        record = Sent(kind, tid, message.fields[11], message.fields[7], payload, amount)
        self.sent.append(record)
        return record

    def choose(self, tid: str) -> tuple[Sent, Sent | None]:
        """The next request for terminal ``tid``: (what to send, the earlier request it repeats)."""
        terminal = self.terminals[tid]
        roll = self.rng.random()
        if roll < 0.08 and self.answered:
            earlier = self.rng.choice(self.answered)
            return earlier, earlier
        if roll < 0.22 and tid != DUKPT_TERMINAL:
            candidates = [
                p
                for p in self.approved_purchases
                if p.tid == tid and id(p) not in self.reversed and p.kind == "purchase"
            ]
            if candidates:
                original = self.rng.choice(candidates)
                self.reversed.add(id(original))
                record = self._new(tid, "reversal", terminal.reversal(original.payload))
                record.original = original
                return record, None
        pan, pin, _weight = self.rng.choices(CARDS, weights=[c[2] for c in CARDS])[0]
        if roll < 0.28:
            return self._new(tid, "balance", terminal.balance(pan=pan, pin=pin)), None
        amount = self.rng.randint(1, 100) * 1_000
        return self._new(tid, "purchase", terminal.purchase(pan=pan, pin=pin, amount=amount)), None

    async def connect(self) -> object:
        from scripts.pos import PosClient

        while not self.stop.is_set():
            try:
                return await PosClient.connect("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
        return None

    async def worker(self, index: int) -> None:
        from scripts.pos import PosClient

        tid = (*TDES_TERMINALS, DUKPT_TERMINAL)[index % 4]
        client: PosClient | None = None
        pending: list[Sent] = []  # cut by a kill: retransmitted unchanged
        while not self.stop.is_set() or pending:
            if client is None:
                connected = await self.connect()
                if connected is None:
                    break
                assert isinstance(connected, PosClient)
                client = connected
            repeat_of: Sent | None
            if pending:
                record, repeat_of = pending[0], pending[0]
            else:
                record, repeat_of = self.choose(tid)
            self.report.requests_sent += 1
            if repeat_of is not None:
                self.report.retransmissions += 1
            try:
                raw = await client.request(record.payload, REQUEST_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                self.report.broken_by_kill += 1
                with contextlib.suppress(OSError):
                    await client.close()
                client = None
                if record.response_code is None and all(p is not record for p in pending):
                    pending.append(record)
                if self.stop.is_set() and not await self._server_up():
                    break
                continue
            if pending and record is pending[0]:
                pending.pop(0)
            self.report.responses += 1
            response, _mac_ok = self.terminals[record.tid].check_response(raw, record.payload)
            if response.get(11) != record.stan or response.get(41) != record.tid:
                self.report.problems.append(
                    f"{record.tid} STAN {record.stan}: answer for another request"
                )
                continue
            code = response.get(39) or ""
            if record.response_code is not None:
                if (code, response.get(37), response.get(38)) != (
                    record.response_code,
                    record.rrn,
                    record.auth_id,
                ):
                    self.report.retransmission_mismatches += 1
                    self.report.problems.append(
                        f"{record.tid} STAN {record.stan}: retransmission answered {code}/"
                        f"{response.get(38)}, first answer {record.response_code}/{record.auth_id}"
                    )
                continue
            record.response_code = code
            record.rrn, record.auth_id = response.get(37), response.get(38)
            self.answered.append(record)
            if code == "00" and record.kind == "purchase":
                self.approved_purchases.append(record)
            elif code == "00" and record.kind == "reversal":
                self.report.reversals_approved += 1
        if client is not None:
            await client.close()

    async def _server_up(self) -> bool:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        return True


async def _drive(options: CrashOptions, server: ServerProcess, report: CrashReport) -> _Load:
    load = _Load(options, server.port, report)
    killer_rng = random.Random(options.seed * 7919 + 1)
    workers = [asyncio.create_task(load.worker(i)) for i in range(options.connections)]
    deadline = time.monotonic() + options.time_max_s
    try:
        for number in range(1, options.kills + 1):
            delay = killer_rng.uniform(options.kill_delay_min_s, options.kill_delay_max_s)
            await asyncio.sleep(delay)
            await asyncio.to_thread(server.kill)
            report.kills += 1
            restart_s = await asyncio.to_thread(server.start)
            report.restarts += 1
            report.restart_s_max = max(report.restart_s_max, restart_s)
            if options.verbose:
                print(
                    f"kill {number}/{options.kills} after {delay:.2f} s; restarted in "
                    f"{restart_s:.2f} s; {report.requests_sent} requests so far",
                    file=sys.stderr,
                    flush=True,
                )
            if time.monotonic() > deadline:
                report.problems.append(f"time limit {options.time_max_s} s reached")
                break
        await asyncio.sleep(options.settle_s)
    finally:
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), REQUEST_TIMEOUT_S * 4)
    return load


def check_ledger(url: str, load: _Load, report: CrashReport) -> None:
    """Open the ledger directly and check it against what the terminals saw."""
    from ledger.store import Store

    store = Store(url)
    try:
        with store.engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT id, tid, stan, transmission, kind, response_code, amount, "
                "reversed_amount, refunded_amount, original_id FROM transactions"
            ).all()
            transfer_rows = connection.exec_driver_sql(
                "SELECT transaction_id, count(*) FROM transfers "
                "WHERE transaction_id IS NOT NULL GROUP BY transaction_id"
            ).all()
            report.transfers = int(
                connection.exec_driver_sql("SELECT count(*) FROM transfers").scalar_one()
            )
            events = {
                str(r[0])
                for r in connection.exec_driver_sql(
                    "SELECT event_id FROM outbox WHERE substr(topic, 1, 13) = 'transactions/'"
                ).all()
            }
        totals = store.totals()
        report.debits_posted, report.credits_posted = totals.debits_posted, totals.credits_posted
        report.balanced = totals.balanced
        broken = store.verify_journal()
        report.journal_ok = broken is None
        if broken is not None:
            report.problems.append(f"journal breaks at entry {broken[0]}: {broken[1]}")
    finally:
        store.close()
    report.transactions = len(rows)
    transfers_of = {int(r[0]): int(r[1]) for r in transfer_rows}
    by_key: dict[tuple[str, str, str], list[Any]] = {}
    for row in rows:
        by_key.setdefault((row.tid, row.stan, row.transmission), []).append(row)
    report.duplicate_keys = sum(1 for found in by_key.values() if len(found) > 1)
    for row in rows:
        if row.reversed_amount > row.amount or row.refunded_amount > row.amount:
            report.problems.append(
                f"transaction {row.id}: reversed {row.reversed_amount} / refunded "
                f"{row.refunded_amount} of {row.amount}"
            )
        event_id = hashlib.sha256(f"{row.tid}|{row.stan}|{row.transmission}".encode()).hexdigest()[
            :32
        ]
        if event_id not in events:
            report.outbox_missing += 1
    for record in load.answered:
        if record.response_code != "00" or record.kind == "balance":
            continue
        report.approvals_received += 1
        found = by_key.get((record.tid, record.stan, record.transmission), [])
        stored = found[0] if found else None
        where = f"{record.kind} {record.tid} STAN {record.stan} field 7 {record.transmission}"
        if stored is None or stored.response_code != "00":
            report.losses.append(f"{where}: approved on the wire, not approved in the ledger")
            continue
        if not transfers_of.get(int(stored.id), 0):
            report.losses.append(f"{where}: approved, but no transfers stored")
            continue
        report.approvals_found += 1
        if record.kind == "reversal" and record.original is not None:
            original = by_key.get(
                (record.original.tid, record.original.stan, record.original.transmission), []
            )
            if not original or original[0].reversed_amount <= 0:
                report.problems.append(f"{where}: approved, but the original is not reversed")


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty PostgreSQL database (dropped afterwards); yields its SQLAlchemy URL."""
    import psycopg

    name = f"honar_crash_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(options: CrashOptions) -> CrashReport:
    """Run the whole experiment; return its report (the server is stopped afterwards)."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        data_dir = Path(options.data_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        data_dir.mkdir(parents=True, exist_ok=True)
        url = options.ledger_url or f"sqlite:///{data_dir / 'honar.db'}"
        report = CrashReport(ledger="PostgreSQL" if url.startswith("postgresql") else "SQLite")
        server = ServerProcess(
            port=free_port(),
            data_dir=data_dir,
            ledger_url=options.ledger_url,
            python=options.python,
            log_path=data_dir / "serve.log",
        )
        server.start()
        try:
            load = asyncio.run(_drive(options, server, report))
        finally:
            code = server.stop()
        if code not in (0, -signal.SIGTERM):
            report.problems.append(f"the server exited with {code} on SIGTERM")
        check_ledger(url, load, report)
        if report.approvals_received == 0:
            report.problems.append(f"no approval was received at all; see {server.log_path}")
    report.elapsed_s = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the summary table, exit 0 when every check held."""
    parser = argparse.ArgumentParser(prog="python -m scripts.crash_test", description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--ledger-url", default="", help="SQLAlchemy URL (default: SQLite)")
    parser.add_argument(
        "--pg-admin-url",
        default="",
        help="create a fresh PostgreSQL database through this URL, run on it, drop it",
    )
    parser.add_argument("--data-dir", default="", help="keep database and logs here")
    parser.add_argument("--time-max-s", type=float, default=600.0)
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    options = CrashOptions(
        kills=args.kills,
        seed=args.seed,
        connections=args.connections,
        ledger_url=args.ledger_url,
        data_dir=args.data_dir,
        time_max_s=args.time_max_s,
        verbose=args.verbose,
    )
    if args.pg_admin_url:
        with fresh_database(args.pg_admin_url) as url:
            options.ledger_url = url
            report = run(options)
    else:
        report = run(options)
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
