"""A process streaming group-committed jobs is killed with SIGKILL mid-stream. After reopening the
ledger: every job it reported committed is there, no job is half there (each has both of its
postings or none), debits equal credits and the journal verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ledger import schema
from ledger.model import AccountFlags
from ledger.store import Store

from conftest import fresh_postgres_database

WORKER = Path(__file__).with_name("ledger_worker.py")
ROOT = Path(__file__).parents[2]
REPORTED_BEFORE_KILL = 400  # committed jobs the child reports before we kill it
JOBS_MAX = 1_000_000
READ_TIMEOUT_S = 120


def crash_and_check(url: str) -> None:
    store = Store(url)
    store.migrate()
    with store.transaction() as connection:
        program = store.create_account(connection, "program:CRASH", AccountFlags.NONE)
        purse = store.create_account(
            connection, "purse:CRASH:GN", AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        )
        merchant = store.create_account(
            connection, "merchant:CRASH:payable", AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        )
    store.close()
    child = subprocess.Popen(
        [sys.executable, str(WORKER), "stream", url, str(program), str(purse), str(merchant),
         str(JOBS_MAX)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    reported: list[tuple[str, str]] = []
    try:
        assert child.stdout is not None
        while len(reported) < REPORTED_BEFORE_KILL:
            line = child.stdout.readline()
            assert line, "the child ended before it was killed"
            stan, transmission = line.split()
            reported.append((stan, transmission))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(READ_TIMEOUT_S)
        # Lines the child wrote between our last read and the kill were committed too.
        for line in child.stdout.read().splitlines():
            stan, transmission = line.split()
            reported.append((stan, transmission))
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    reopened = Store(url)
    try:
        reopened.migrate()
        tx, tr = schema.transactions.c, schema.transfers.c
        with reopened.engine.connect() as connection:
            stored = {
                (r.stan, r.transmission)
                for r in connection.execute(select(tx.stan, tx.transmission))
            }
            legs = connection.execute(
                select(tr.transaction_id, func.count()).group_by(tr.transaction_id)
            ).all()
            transactions = int(
                connection.scalar(select(func.count()).select_from(schema.transactions)) or 0
            )
        missing = [key for key in reported if key not in stored]
        assert missing == []
        assert len(stored) >= len(reported)
        assert {count for _id, count in legs} == {2}  # no job half there
        assert len(legs) == transactions
        totals = reopened.totals()
        assert totals.balanced, totals
        assert reopened.account(purse).balance_credit == 0
        assert reopened.account(merchant).credits_posted == 7 * transactions
        assert reopened.verify_journal() is None
    finally:
        reopened.close()


def test_sigkill_mid_stream_sqlite(tmp_path: Path) -> None:
    crash_and_check(f"sqlite:///{tmp_path / 'crash.db'}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.mark.postgres
def test_sigkill_mid_stream_postgres(pg_url: str) -> None:
    crash_and_check(pg_url)
