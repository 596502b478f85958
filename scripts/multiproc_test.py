"""Several ``honar serve`` processes on one PostgreSQL ledger, racing on the same card.

    python -m scripts.multiproc_test --pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres
    python -m scripts.multiproc_test --ledger-url postgresql+psycopg://postgres@127.0.0.1:5432/db \\
        --processes 3 --purchases 300 --hsm-tcp

The first process migrates the fresh database and loads the demo data; the others start after
it. Then terminals HNR00004 and HNR00002 (a bookstore: 10 % program-funded discount) each hold
one connection to every process and send purchases of ``--amount`` (70,000 IRR) on card M0002
(3,000,000 IRR in its general purse) as fast as the answers come, all at once, together with
purchases on M0006 (plenty of funds) so that the merchants' accounts are contended too. With
``--hsm-tcp`` the processes use one simulated HSM over TCP (``honar hsm serve``) instead of
their in-process HSM.

Checked afterwards:

* no overdraft: approved M0002 purchases x amount <= 3,000,000, and it is exactly what the
  ledger charged the card (and what a balance inquiry reports as spent);
* no double posting: no request key stored twice; every approval the terminals saw is stored;
* reconciliation: each terminal sends 0500 with the totals it counted to one process; ``00``;
* debits equal credits, the journal hash chain verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.crash_test import ROOT, ServerProcess, free_port, fresh_database

M0002 = ("6362149173324546", "4321")
M0006 = ("6362144899564327", "9876")
M0002_FUNDS = 3_000_000
# HNR00002 is a bookstore: BOOK10 takes 10 % off, so the card is charged less than field 4.
TERMINALS = ("HNR00004", "HNR00002")


@dataclass
class MultiOptions:
    """What to run."""

    ledger_url: str = ""
    processes: int = 2
    purchases: int = 120  # on M0002, spread over terminals and processes
    amount: int = 70_000
    background_purchases: int = 200  # on M0006
    hsm_tcp: bool = False
    seed: int = 1
    python: str = sys.executable
    data_dir: str = ""


@dataclass
class TerminalCount:
    """What one terminal counted from its answers (for its 0500)."""

    debits_count: int = 0
    debits_amount: int = 0


@dataclass
class MultiReport:
    """Figures and findings; ``ok`` when every check held."""

    processes: int = 0
    hsm: str = "in-process"
    m0002_sent: int = 0
    m0002_approved: int = 0
    m0002_declined_51: int = 0
    m0002_other: dict[str, int] = field(default_factory=dict)
    approved_per_process: list[int] = field(default_factory=list)
    m0006_approved: int = 0
    charged_on_wire: int = 0
    charged_in_ledger: int = 0
    spent_per_balance_inquiry: int = -1
    duplicate_keys: int = 0
    approvals_missing: int = 0
    reconciliation: dict[str, str] = field(default_factory=dict)
    balanced: bool = False
    journal_ok: bool = False
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no overdraft, no double posting and everything reconciles."""
        return (
            not self.problems
            and self.charged_on_wire <= M0002_FUNDS
            and self.charged_on_wire == self.charged_in_ledger == self.spent_per_balance_inquiry
            and self.duplicate_keys == 0
            and self.approvals_missing == 0
            and set(self.reconciliation.values()) == {"00"}
            and self.balanced
            and self.journal_ok
            and self.m0002_approved > 0
            and all(n > 0 for n in self.approved_per_process)
        )

    def table(self) -> str:
        """The summary as aligned rows."""
        rows = [
            ("switch processes", self.processes),
            ("HSM", self.hsm),
            ("M0002 purchases sent", self.m0002_sent),
            ("M0002 approved", self.m0002_approved),
            ("M0002 approved per process", ", ".join(map(str, self.approved_per_process))),
            ("M0002 declined 51 (funds)", self.m0002_declined_51),
            ("M0002 other answers", self.m0002_other or "none"),
            ("M0002 charged (answers)", f"{self.charged_on_wire:,}"),
            ("M0002 charged (ledger)", f"{self.charged_in_ledger:,}"),
            ("M0002 spent (balance inquiry)", f"{self.spent_per_balance_inquiry:,}"),
            ("M0002 funds", f"{M0002_FUNDS:,}"),
            ("M0006 approved (background)", self.m0006_approved),
            ("request keys stored twice", self.duplicate_keys),
            ("approvals not in the ledger", self.approvals_missing),
            ("0500 reconciliation", self.reconciliation),
            ("debits = credits = journal", self.balanced),
            ("journal hash chain verifies", self.journal_ok),
            ("elapsed (s)", f"{self.elapsed_s:.1f}"),
            ("result", "OK" if self.ok else "FAILED"),
        ]
        width = max(len(name) for name, _value in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines + [f"PROBLEM: {p}" for p in self.problems[:20]])


async def _race(options: MultiOptions, ports: list[int], report: MultiReport) -> dict[str, object]:
    from scripts.pos import PosClient, PosTerminal

    rng = random.Random(options.seed)
    terminals = {tid: PosTerminal.demo(tid) for tid in TERMINALS}
    counts = {tid: TerminalCount() for tid in TERMINALS}
    approved_keys: list[tuple[str, str, str]] = []
    report.approved_per_process = [0] * len(ports)
    # The work: (card, amount) items, dealt to (terminal, process) connections round robin.
    work = [("M0002", options.amount)] * options.purchases
    work += [("M0006", rng.randint(1, 50) * 1_000)] * options.background_purchases
    rng.shuffle(work)
    lanes = [(tid, index) for tid in TERMINALS for index in range(len(ports))]
    queues: list[list[tuple[str, int]]] = [work[i :: len(lanes)] for i in range(len(lanes))]
    start = asyncio.Event()

    async def lane(tid: str, process: int, items: list[tuple[str, int]]) -> None:
        terminal = terminals[tid]
        client = await PosClient.connect("127.0.0.1", ports[process])
        await start.wait()
        try:
            for card, amount in items:
                pan, pin = M0002 if card == "M0002" else M0006
                payload = terminal.purchase(pan=pan, pin=pin, amount=amount)
                raw = await client.request(payload, timeout_s=30)
                response, mac_ok = terminal.check_response(raw, payload)
                code = response.get(39) or ""
                if not mac_ok:
                    report.problems.append(f"{tid}: answer with a wrong MAC ({code})")
                if code == "00":
                    counts[tid].debits_count += 1
                    counts[tid].debits_amount += amount
                    approved_keys.append((tid, response.fields[11], response.fields[7]))
                if card == "M0006":
                    report.m0006_approved += code == "00"
                    continue
                report.m0002_sent += 1
                if code == "00":
                    report.m0002_approved += 1
                    report.approved_per_process[process] += 1
                    report.charged_on_wire += _charged(response.get(54) or "", amount)
                elif code == "51":
                    report.m0002_declined_51 += 1
                else:
                    report.m0002_other[code] = report.m0002_other.get(code, 0) + 1
        finally:
            await client.close()

    tasks = [
        asyncio.create_task(lane(tid, process, queues[i])) for i, (tid, process) in enumerate(lanes)
    ]
    await asyncio.sleep(0.2)
    start.set()
    await asyncio.gather(*tasks)

    # Reconciliation: each terminal asks a different process.
    for index, tid in enumerate(TERMINALS):
        terminal = terminals[tid]
        count = counts[tid]
        payload = terminal.reconciliation(
            credits_count=0,
            debits_count=count.debits_count,
            credits_amount=0,
            debits_amount=count.debits_amount,
        )
        raw = await _exchange("127.0.0.1", ports[index % len(ports)], payload)
        report.reconciliation[tid] = terminal.check_response(raw, payload)[0].get(39) or ""
    # What a balance inquiry says is left on M0002 (asked of the last process).
    terminal = terminals["HNR00004"]
    payload = terminal.balance(pan=M0002[0], pin=M0002[1])
    raw = await _exchange("127.0.0.1", ports[-1], payload)
    balance = terminal.check_response(raw, payload)[0]
    available = _available(balance.get(54) or "")
    if available is not None:
        report.spent_per_balance_inquiry = M0002_FUNDS - available
    return {"approved_keys": approved_keys}


async def _exchange(host: str, port: int, payload: bytes) -> bytes:
    from scripts.pos import PosClient

    client = await PosClient.connect(host, port)
    try:
        return await client.request(payload, timeout_s=30)
    finally:
        await client.close()


def _amount_54(field_54: str, account_amount_type: str) -> int | None:
    for i in range(0, len(field_54), 20):
        block = field_54[i : i + 20]
        if block[:4] == account_amount_type:
            return (-1 if block[7] == "D" else 1) * int(block[8:20])
    return None


def _available(field_54: str) -> int | None:
    return _amount_54(field_54, "0002")  # all purses, available balance


def _charged(field_54: str, amount: int) -> int:
    charged = _amount_54(field_54, "0092")  # all purses, amount charged to the card
    return amount if charged is None else abs(charged)


def check_ledger(url: str, approved_keys: list[tuple[str, str, str]], report: MultiReport) -> None:
    """Duplicates, stored approvals, what the card was charged, balance and journal."""
    from ledger.store import Store

    store = Store(url)
    try:
        with store.engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT t.tid, t.stan, t.transmission, t.response_code, t.kind, "
                "t.amount_charged, m.id FROM transactions t "
                "LEFT JOIN cards c ON c.id = t.card_id LEFT JOIN members m ON m.id = c.member_id"
            ).all()
        totals = store.totals()
        report.balanced = totals.balanced
        broken = store.verify_journal()
        report.journal_ok = broken is None
        if broken is not None:
            report.problems.append(f"journal breaks at {broken[0]}: {broken[1]}")
    finally:
        store.close()
    keys: dict[tuple[str, str, str], int] = {}
    for row in rows:
        key = (row[0], row[1], row[2])
        keys[key] = keys.get(key, 0) + 1
        if row[6] == "M0002" and row[4] == "purchase" and row[3] == "00":
            report.charged_in_ledger += int(row[5])
    report.duplicate_keys = sum(1 for n in keys.values() if n > 1)
    stored_ok = {(r[0], r[1], r[2]) for r in rows if r[3] == "00"}
    report.approvals_missing = sum(1 for key in approved_keys if key not in stored_ok)


def run(options: MultiOptions) -> MultiReport:
    """Start the processes (and the HSM), race, stop them, check; return the report."""
    started = time.monotonic()
    hsm = "TCP" if options.hsm_tcp else "in-process"
    report = MultiReport(processes=options.processes, hsm=hsm)
    assert options.ledger_url.startswith("postgresql"), "several processes need PostgreSQL"
    with contextlib.ExitStack() as stack:
        base = Path(options.data_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        extra: tuple[str, ...] = ()
        if options.hsm_tcp:
            hsm_port = free_port()
            hsm_log = open(base / "hsm.log", "ab")  # noqa: SIM115 - closed by the exit stack
            stack.enter_context(hsm_log)
            hsm_process = subprocess.Popen(
                [options.python, "-m", "switch.cli", "hsm", "serve", "--port", str(hsm_port)],
                cwd=ROOT,
                stdout=hsm_log,
                stderr=hsm_log,
            )
            stack.callback(hsm_process.wait, 30)
            stack.callback(hsm_process.terminate)
            config = base / "honar.toml"
            config.write_text(f'[hsm]\nmode = "tcp"\nport = {hsm_port}\n')
            extra = ("--config", str(config))
            _wait_port(hsm_port)
        servers = []
        for index in range(options.processes):
            directory = base / f"p{index + 1}"
            directory.mkdir(parents=True, exist_ok=True)
            server = ServerProcess(
                port=free_port(),
                data_dir=directory,
                ledger_url=options.ledger_url,
                python=options.python,
                log_path=directory / "serve.log",
                global_args=extra,
            )
            servers.append(server)
            server.start()  # one after the other: the first loads the demo data
            stack.callback(server.stop)
        result = asyncio.run(_race(options, [s.port for s in servers], report))
        for server in servers:
            code = server.stop()
            if code != 0:
                report.problems.append(f"server on port {server.port} exited with {code}")
    approved = result["approved_keys"]
    assert isinstance(approved, list)
    check_ledger(options.ledger_url, approved, report)
    report.elapsed_s = time.monotonic() - started
    return report


def _wait_port(port: int, timeout_s: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the summary, exit 0 when every check held."""
    parser = argparse.ArgumentParser(prog="python -m scripts.multiproc_test", description=__doc__)
    parser.add_argument("--ledger-url", default="", help="a fresh PostgreSQL database")
    parser.add_argument("--pg-admin-url", default="", help="create (and drop) a fresh database")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--purchases", type=int, default=120)
    parser.add_argument("--amount", type=int, default=70_000)
    parser.add_argument("--background-purchases", type=int, default=200)
    parser.add_argument("--hsm-tcp", action="store_true", help="one simulated HSM over TCP")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    options = MultiOptions(
        ledger_url=args.ledger_url,
        processes=args.processes,
        purchases=args.purchases,
        amount=args.amount,
        background_purchases=args.background_purchases,
        hsm_tcp=args.hsm_tcp,
        seed=args.seed,
    )
    if not (args.ledger_url or args.pg_admin_url):
        parser.error("give --ledger-url (a fresh database) or --pg-admin-url")
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
