"""``honar ledger-bench``: ledger transfers per second and the time to disburse to many members.

Prints, for SQLite (a temporary file) and PostgreSQL (``--pg-url``; skipped when unreachable):

* single: one transfer per database transaction (each committed, ``synchronous=FULL``);
* batched: authorization jobs of one transfer each through the GroupCommitter;
* disbursement: validating and applying a CSV file of ``--members`` rows (SQLite only).

Every phase is bounded by a count and by ``--seconds``. ``--quick`` keeps the whole run short
(for CI). A benchmark prints figures; it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
import time
from pathlib import Path
from typing import Any

from hsm_sim.hsm import Hsm
from hsm_sim.keys import Lmk
from ledger import demo
from ledger.disburse import disburse_file
from ledger.domain import AuthorizationJob, JobResult, Outcome, Posting, TransactionKey
from ledger.engine import GroupCommitter
from ledger.model import AccountFlags, Transfer, TransferCode
from ledger.store import Store

PG_URL_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
NOW = "2026-05-01T08:30:00+00:00"
SINGLE_MAX = 5_000
BATCHED_MAX = 50_000
MEMBERS_DEFAULT = 100_000
SECONDS_DEFAULT = 5.0
CHUNK_JOBS = 512  # jobs submitted before the time bound is checked


def register(commands: Any) -> None:
    """Add ``ledger-bench`` to the ``honar`` subcommands."""
    parser = commands.add_parser("ledger-bench", help="ledger transfers/s and disbursement time")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--pg-url", default=PG_URL_DEFAULT, help="PostgreSQL (a temp schema)")
    parser.add_argument("--members", type=int, default=MEMBERS_DEFAULT)
    parser.add_argument("--seconds", type=float, default=SECONDS_DEFAULT, help="per phase")
    parser.add_argument("--quick", action="store_true", help="small counts, for CI")


def _accounts(store: Store, tag: str) -> tuple[int, int]:
    with store.transaction() as connection:
        source = store.create_account(connection, f"bench:{tag}:source", AccountFlags.NONE)
        target = store.create_account(connection, f"bench:{tag}:target", AccountFlags.NONE)
    return source, target


def bench_single(store: Store, count: int, seconds: float) -> float:
    """Transfers/s with one transfer per committed transaction."""
    source, target = _accounts(store, "single")
    started = time.perf_counter()
    done = 0
    while done < count and time.perf_counter() - started < seconds:
        transfer = Transfer(f"single:{done}", source, target, 1, 364, TransferCode.PURCHASE)
        with store.transaction() as connection:
            store.post_transfer(connection, transfer, business_date=NOW[:10], now=NOW)
        done += 1
    return done / (time.perf_counter() - started)


def bench_batched(store: Store, count: int, seconds: float) -> float:
    """Transfers/s with one transfer per authorization job through the GroupCommitter."""
    source, target = _accounts(store, "batched")
    posting = (Posting(source, target, 1, TransferCode.PURCHASE),)
    committer = GroupCommitter(store, batch_max=256)
    committer.start()
    started = time.perf_counter()
    futures: list[concurrent.futures.Future[JobResult]] = []
    for i in range(count):
        key = TransactionKey("BENCH001", f"{i % 1_000_000:06d}", f"{i // 1_000_000:010d}")
        job = AuthorizationJob(
            key=key,
            mti="0200",
            kind="purchase",
            request_digest="bench",
            card_id=None,
            merchant_id=None,
            pan_masked=None,
            business_date=NOW[:10],
            now=NOW,
            decide=lambda _view: Outcome("00", postings=posting, amount=1),
        )
        futures.append(committer.submit(job))
        if i % CHUNK_JOBS == CHUNK_JOBS - 1:
            # Wait for the chunk, so that the time bound holds for completion, not submission.
            futures[-1].result()
            if time.perf_counter() - started > seconds:
                break
    for future in futures:
        future.result()
    committer.stop()
    return len(futures) / (time.perf_counter() - started)


def bench_disbursement(url: str, directory: Path, members: int) -> tuple[float, float]:
    """(seconds to create the members, seconds to validate and apply a CSV to all of them)."""
    store = Store(url)
    try:
        store.migrate()
        demo.load_demo(store, Hsm(lmk=Lmk.test()))
        names = [(f"B{i:08d}", f"Member {i}") for i in range(1, members + 1)]
        started = time.perf_counter()
        store.add_members_with_cards(names, [])
        created = time.perf_counter() - started
        path = directory / "disburse.csv"
        lines = "".join(f"{member},{1_000_000}\n" for member, _name in names)
        path.write_text("member_id,amount\n" + lines, encoding="utf-8")
        started = time.perf_counter()
        disburse_file(
            store,
            str(path),
            program_code="FUND-GEN",
            batch_id="bench",
            business_date=NOW[:10],
            now=NOW,
        )
        applied = time.perf_counter() - started
        assert store.totals().balanced
        return created, applied
    finally:
        store.close()


def _pg_database(admin_url: str) -> tuple[str, Any] | None:
    try:
        import psycopg
    except ImportError:
        return None
    import secrets

    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"honar_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(plain, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        return None

    def drop() -> None:
        with psycopg.connect(plain, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}", drop


def run(args: argparse.Namespace) -> int:
    """Run every phase and print the figures."""
    single_max = 200 if args.quick else SINGLE_MAX
    batched_max = 1_024 if args.quick else BATCHED_MAX
    members = min(args.members, 5_000) if args.quick else args.members
    seconds = min(args.seconds, 1.5) if args.quick else args.seconds
    with tempfile.TemporaryDirectory() as directory:
        sqlite = Store(f"sqlite:///{Path(directory) / 'bench.db'}")
        sqlite.migrate()
        single = bench_single(sqlite, single_max, seconds)
        batched = bench_batched(sqlite, batched_max, seconds)
        sqlite.close()
        print(f"sqlite      single  {single:>10,.0f} transfers/s   (one per transaction)")
        print(f"sqlite      batched {batched:>10,.0f} transfers/s   (GroupCommitter)")
        pg = _pg_database(args.pg_url)
        if pg is None:
            print("postgresql  skipped (not reachable)")
        else:
            url, drop = pg
            try:
                store = Store(url)
                store.migrate()
                single = bench_single(store, single_max, seconds)
                batched = bench_batched(store, batched_max, seconds)
                store.close()
            finally:
                drop()
            print(f"postgresql  single  {single:>10,.0f} transfers/s   (one per transaction)")
            print(f"postgresql  batched {batched:>10,.0f} transfers/s   (GroupCommitter)")
        url = f"sqlite:///{Path(directory) / 'disburse.db'}"
        created, applied = bench_disbursement(url, Path(directory), members)
        print(f"disbursement {members:,} members: {applied:.2f} s to validate and apply the CSV")
        print(f"             ({created:.2f} s to create the members beforehand)")
    return 0


def main() -> int:
    """``python -m scripts.ledger_bench``."""
    parser = argparse.ArgumentParser(prog="ledger_bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
