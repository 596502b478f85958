"""Two OS processes race 2,000 equal payments against one purse that holds enough for 1,000, each
through its own GroupCommitter on one PostgreSQL ledger: exactly 1,000 succeed, the purse ends
at zero, no transfer is posted twice, debits equal credits and the journal verifies."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ledger import schema
from ledger.model import AccountFlags, Transfer, TransferCode, TransferStatus
from ledger.store import Store

from conftest import fresh_postgres_database

WORKER = Path(__file__).with_name("ledger_worker.py")
ROOT = Path(__file__).parents[2]
PAYMENTS_PER_PROCESS = 1000
AMOUNT = 1000
PROCESS_TIMEOUT_S = 240


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.mark.postgres
def test_two_processes_race_for_one_purse(pg_url: str) -> None:
    store = Store(pg_url)
    store.migrate()
    with store.transaction() as connection:
        program = store.create_account(connection, "program:RACE", AccountFlags.NONE)
        purse = store.create_account(
            connection, "purse:RACE:GN", AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        )
        merchant = store.create_account(
            connection, "merchant:RACE:payable", AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        )
        funding = Transfer(
            "race:fund",
            program,
            purse,
            PAYMENTS_PER_PROCESS * AMOUNT,
            364,
            TransferCode.DISBURSEMENT,
        )
        status = store.post_transfer(
            connection, funding, business_date="2026-05-01", now="2026-05-01T08:00:00+00:00"
        )
        assert status is TransferStatus.CREATED
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "race",
                pg_url,
                f"RACE000{n}",
                str(PAYMENTS_PER_PROCESS),
                str(purse),
                str(merchant),
                str(AMOUNT),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (1, 2)
    ]
    approved = 0
    try:
        for process in processes:
            out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
            assert process.returncode == 0, err[-2000:]
            words = out.split()
            assert words[0] == "approved", out
            approved += int(words[1])
            assert int(words[1]) + int(words[3]) == PAYMENTS_PER_PROCESS
    finally:
        for process in processes:
            process.kill()
    try:
        assert approved == PAYMENTS_PER_PROCESS
        assert store.account(purse).balance_credit == 0
        assert store.account(purse).debits_pending == 0
        assert store.account(merchant).credits_posted == PAYMENTS_PER_PROCESS * AMOUNT
        t = schema.transfers.c
        with store.engine.connect() as connection:
            payments = connection.execute(
                select(func.count(), func.count(t.id.distinct())).where(t.debit_account_id == purse)
            ).one()
            approved_rows = connection.scalar(
                select(func.count()).where(schema.transactions.c.response_code == "00")
            )
        assert tuple(payments) == (PAYMENTS_PER_PROCESS, PAYMENTS_PER_PROCESS)
        assert approved_rows == PAYMENTS_PER_PROCESS
        assert store.totals().balanced, store.totals()
        assert store.verify_journal() is None
    finally:
        store.close()
