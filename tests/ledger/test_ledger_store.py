"""Ledger storage on a real database: migrations, demo data, transfers, the group committer.

SQLite runs on a file under ``tmp_path``; the PostgreSQL tests create a fresh database on the
local server (127.0.0.1:5432) and drop it afterwards. Every test that moves money ends by
checking that debits equal credits.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy import inspect as sa_inspect

from hsm_sim.hsm import Hsm
from hsm_sim.keys import Lmk
from ledger import demo, schema
from ledger.domain import (
    AuthorizationJob,
    CardSnapshot,
    JobResult,
    LedgerView,
    Outcome,
    Posting,
    TransactionKey,
    TransactionRecord,
)
from ledger.engine import GroupCommitter
from ledger.model import Account, Transfer, TransferCode, TransferStatus
from ledger.store import Store, TransferRejected

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
FUTURE_TIMEOUT_S = 60

# The purses of spec/demo-data.md, copied from the spec rather than from ledger.demo so that a
# wrong row in the loader is caught.
# fmt: off
DEMO_PURSES = {
    ("M0001", "GN"):    50_000_000,
    ("M0001", "TR"):    20_000_000,
    ("M0002", "GN"):     3_000_000,
    ("M0003", "GN"):    10_000_000,
    ("M0004", "GN"):    10_000_000,
    ("M0005", "BK"):     5_000_000,
    ("M0006", "GN"): 1_000_000_000,
}
PURSE_PROGRAMS = {"GN": "FUND-GEN", "TR": "MOC-TOUR", "BK": "MOC-BOOK"}
DEMO_PANS = (
    "6362147682085715", "6362149173324546", "6362148033590999",
    "6362149895682841", "6362140409390583", "6362144899564327",
)
DEMO_CLEAR_KEYS = (
    "F8B9C2DF23DF10232A80FD9B86891A5D",  # PVK
    "58E3F4A1490BC7452C7A7C7FE9E99145",  # CVK
    "0123456789ABCDEFFEDCBA9876543210",  # BDK
    # TMK, TPK and TAK of terminals HNR00001, HNR00002, HNR00004
    "BF519EFED3D57C6BE05D54FD38793B1C", "0B4FA4EF4F6BE5E9B6C74F19862A15BA",
    "A47C83C1974C1A43F1ADB9809425EFF7", "19CD862CD5AEA70E0B5894AB7CAD0DC7",
    "401F67FE792561C7F4E3B00875CE2591", "D96DA4899752752A61BC611FF76176C2",
    "DFE34A2004FDC4075DF897E6CB15F794", "B9371C6DE54C290D83106D4C8F2A4F73",
    "49C49E738957EC19C434B98FE9518A07",
)
# fmt: on

BUSINESS_DATE = "2026-05-01"
NOW = "2026-05-01T08:30:00+00:00"


# --- fixtures and helpers ------------------------------------------------------------------------


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'l.db'}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty ledger on a SQLite file."""
    ledger = Store(sqlite_url(tmp_path))
    ledger.migrate()
    yield ledger
    ledger.close()


@pytest.fixture
def demo_store(store: Store) -> Store:
    """The ledger with the demo data set loaded."""
    demo.load_demo(store, Hsm(lmk=Lmk.test()))
    return store


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); skip, or fail under CI, without one."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL at 127.0.0.1:5432 is not reachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    name = f"honar_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def purse(store: Store, member: str, code: str) -> Account:
    return store.account_by_code(demo.purse_account_code(member, code))


def merchant(store: Store, merchant_id: str = "HNR000000000001") -> Account:
    return store.account_by_code(demo.merchant_account_code(merchant_id))


def card_id(store: Store, member: str) -> int:
    with store.engine.connect() as connection:
        found = connection.scalar(
            select(schema.cards.c.id).where(schema.cards.c.member_id == member)
        )
    assert found is not None
    return int(found)


def count(store: Store, table: schema.Table) -> int:
    with store.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table)) or 0)


def job(
    key: TransactionKey,
    decide: Callable[[CardSnapshot | None], Outcome],
    *,
    digest: str = "digest-1",
    card: int | None = None,
) -> AuthorizationJob:
    return AuthorizationJob(
        key=key,
        mti="0200",
        kind="purchase",
        request_digest=digest,
        card_id=card,
        merchant_id="HNR000000000001",
        pan_masked=None,
        business_date=BUSINESS_DATE,
        now=NOW,
        decide=lambda view: decide(view.snapshot),
    )


def key(stan: int, tid: str = "HNR00001") -> TransactionKey:
    return TransactionKey(tid=tid, stan=f"{stan:06d}", transmission="0501083000")


def pay(debit: Account, credit: Account, amount: int) -> Callable[[CardSnapshot | None], Outcome]:
    """A decide() that approves and asks for one purchase posting, whatever the snapshot."""

    def decide(_snapshot: CardSnapshot | None) -> Outcome:
        posting = Posting(debit.id, credit.id, amount, TransferCode.PURCHASE)
        return Outcome("00", postings=(posting,), amount=amount)

    return decide


class Gate:
    """A job that holds the commit thread until opened, so that the jobs after it queue up."""

    def __init__(self, committer: GroupCommitter) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

        def decide(_snapshot: CardSnapshot | None) -> Outcome:
            self.entered.set()
            assert self.opened.wait(FUTURE_TIMEOUT_S), "the test never opened the gate"
            return Outcome("00")

        gate_key = TransactionKey("GATE0001", secrets.token_hex(3), "0501083000")
        self.future = committer.submit(job(gate_key, decide))
        # The commit thread is now inside the gate's batch: whatever comes next waits.
        assert self.entered.wait(FUTURE_TIMEOUT_S)

    def open(self) -> None:
        self.opened.set()


def assert_balanced(store: Store) -> None:
    totals = store.totals()
    assert totals.balanced, totals
    assert totals.debits_posted == totals.credits_posted == totals.journal_posted


# --- schema ---------------------------------------------------------------------------------------


def test_migrate_applies_each_version_once(tmp_path: Path) -> None:
    ledger = Store(sqlite_url(tmp_path))
    try:
        assert ledger.schema_version() == 0
        versions = [version for version, _name, _step in schema.MIGRATIONS]
        assert ledger.migrate() == versions
        assert ledger.migrate() == []
        assert ledger.schema_version() == max(versions)
        assert ledger.is_empty()
        indexes = {i["name"] for i in sa_inspect(ledger.engine).get_indexes("transactions")}
        # v2 made these two; v7 dropped them (unused, and a page per commit each)
        assert not indexes & {"ix_transactions_card_day", "ix_transactions_hold"}
        assert {"ix_transactions_rrn", "ix_transactions_day"} <= indexes
    finally:
        ledger.close()
    # A second process opening the same file finds the schema in place.
    again = Store(sqlite_url(tmp_path))
    try:
        assert again.migrate() == []
        assert again.schema_version() == max(versions)
    finally:
        again.close()


# --- demo data ------------------------------------------------------------------------------------


def test_demo_purse_balances_match_the_spec(demo_store: Store) -> None:
    for (member, code), amount in DEMO_PURSES.items():
        account = purse(demo_store, member, code)
        assert account.balance_credit == amount, (member, code)
        assert account.available_credit == amount, (member, code)
        assert (account.debits_posted, account.debits_pending) == (0, 0)
    assert not demo_store.is_empty()
    assert_balanced(demo_store)


def test_demo_balances_arise_from_disbursements(demo_store: Store) -> None:
    with demo_store.engine.connect() as connection:
        rows = connection.execute(select(schema.transfers)).all()
    assert len(rows) == len(DEMO_PURSES)
    for (member, code), amount in DEMO_PURSES.items():
        account = purse(demo_store, member, code)
        program = demo_store.account_by_code(demo.program_account_code(PURSE_PROGRAMS[code]))
        into = [r for r in rows if r.credit_account_id == account.id]
        assert len(into) == 1, (member, code)
        assert into[0].code == TransferCode.DISBURSEMENT
        assert into[0].debit_account_id == program.id
        assert into[0].amount == amount
        # Every credit the purse holds is accounted for by a transfer into it.
        assert account.credits_posted == sum(r.amount for r in into)


def test_demo_program_accounts_debited_with_the_sums_disbursed(demo_store: Store) -> None:
    disbursed: dict[str, int] = {}
    for (_member, code), amount in DEMO_PURSES.items():
        program = PURSE_PROGRAMS[code]
        disbursed[program] = disbursed.get(program, 0) + amount
    assert disbursed == {"FUND-GEN": 1_073_000_000, "MOC-TOUR": 20_000_000, "MOC-BOOK": 5_000_000}
    for program, amount in disbursed.items():
        account = demo_store.account_by_code(demo.program_account_code(program))
        assert account.debits_posted == amount, program
        assert account.credits_posted == 0, program
        assert account.balance_credit == -amount, program
    totals = demo_store.totals()
    assert totals.balanced
    assert totals.journal_posted == sum(DEMO_PURSES.values())


def _database_bytes(tmp_path: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in tmp_path.glob("l.db*")}
    assert "l.db" in files
    return files


def _secrets_found(files: dict[str, bytes]) -> list[str]:
    needles: dict[str, bytes] = {}
    for clear in DEMO_CLEAR_KEYS:
        needles[f"key {clear} (hex upper)"] = clear.upper().encode()
        needles[f"key {clear} (hex lower)"] = clear.lower().encode()
        needles[f"key {clear} (binary)"] = bytes.fromhex(clear)
    for pan in DEMO_PANS:
        needles[f"PAN {pan}"] = pan.encode()
        needles[f"PAN {pan} (BCD)"] = bytes.fromhex(pan)
    return [
        f"{what} in {name}"
        for name, data in files.items()
        for what, needle in needles.items()
        if needle in data
    ]


def test_no_clear_key_or_pan_in_the_database_files(tmp_path: Path) -> None:
    ledger = Store(sqlite_url(tmp_path))
    ledger.migrate()
    demo.load_demo(ledger, Hsm(lmk=Lmk.test()))
    # The keys are there, under the LMK, and the cards are there, masked.
    assert all(t.tpk.startswith("U") or t.bdk.startswith("U") for t in ledger.terminals())
    assert ledger.setting("pvk") is not None
    with ledger.engine.connect() as connection:
        masked = set(connection.scalars(select(schema.cards.c.pan_masked)))
    assert masked == {pan[:6] + "******" + pan[-4:] for pan in DEMO_PANS}
    while_open = _database_bytes(tmp_path)
    ledger.close()
    after_close = _database_bytes(tmp_path)
    assert _secrets_found(while_open) == []
    assert _secrets_found(after_close) == []


def test_secret_scan_would_see_a_leaked_pan(tmp_path: Path) -> None:
    """The scan above can fail: a PAN written in clear is found in the file."""
    ledger = Store(sqlite_url(tmp_path))
    ledger.migrate()
    with ledger.engine.begin() as connection:
        connection.execute(schema.members.insert().values(id="LEAK", name=DEMO_PANS[0]))
    ledger.close()
    assert _secrets_found(_database_bytes(tmp_path)) == [f"PAN {DEMO_PANS[0]} in l.db"]


# --- post_transfer --------------------------------------------------------------------------------


def test_post_transfer_created_then_exists(demo_store: Store) -> None:
    program = demo_store.account_by_code(demo.program_account_code("FUND-GEN"))
    target = purse(demo_store, "M0002", "GN")
    transfer = Transfer(
        "top-up:M0002:1",
        program.id,
        target.id,
        250_000,
        364,
        TransferCode.DISBURSEMENT,
        user_data="top-up",
    )
    statuses = []
    for _ in range(2):
        with demo_store.engine.begin() as connection:
            statuses.append(
                demo_store.post_transfer(connection, transfer, business_date=BUSINESS_DATE, now=NOW)
            )
    assert statuses == [TransferStatus.CREATED, TransferStatus.EXISTS]
    assert purse(demo_store, "M0002", "GN").balance_credit == 3_000_000 + 250_000
    assert count(demo_store, schema.transfers) == len(DEMO_PURSES) + 1
    different = Transfer(
        "top-up:M0002:1",
        program.id,
        target.id,
        999,
        364,
        TransferCode.DISBURSEMENT,
        user_data="top-up",
    )
    with demo_store.engine.begin() as connection:
        status = demo_store.post_transfer(
            connection, different, business_date=BUSINESS_DATE, now=NOW
        )
    assert status is TransferStatus.EXISTS_WITH_DIFFERENT_FIELDS
    assert purse(demo_store, "M0002", "GN").balance_credit == 3_000_000 + 250_000
    assert_balanced(demo_store)


def test_post_transfer_cannot_overdraw_a_purse(demo_store: Store) -> None:
    source = purse(demo_store, "M0002", "GN")
    payee = merchant(demo_store)
    before = (source, payee, count(demo_store, schema.transfers), demo_store.totals())
    transfer = Transfer("overdraw:1", source.id, payee.id, 3_000_001, 364, TransferCode.PURCHASE)
    with demo_store.engine.begin() as connection:
        status = demo_store.post_transfer(
            connection, transfer, business_date=BUSINESS_DATE, now=NOW
        )
    assert status is TransferStatus.EXCEEDS_CREDITS
    after = (
        purse(demo_store, "M0002", "GN"),
        merchant(demo_store),
        count(demo_store, schema.transfers),
        demo_store.totals(),
    )
    assert after == before
    # Exactly the whole balance is allowed.
    exact = Transfer("overdraw:2", source.id, payee.id, 3_000_000, 364, TransferCode.PURCHASE)
    with demo_store.engine.begin() as connection:
        status = demo_store.post_transfer(connection, exact, business_date=BUSINESS_DATE, now=NOW)
    assert status is TransferStatus.CREATED
    assert purse(demo_store, "M0002", "GN").balance_credit == 0
    assert_balanced(demo_store)


# --- group committer ------------------------------------------------------------------------------

JOBS = 500
SUBMITTERS = 8


def run_concurrent_purchases(store: Store) -> None:
    """500 purchases from 8 threads through one committer; everything adds up exactly."""
    source = purse(store, "M0006", "GN")
    payee = merchant(store)
    card = card_id(store, "M0006")
    amounts = [1_000 + i for i in range(JOBS)]
    committer = GroupCommitter(store)
    committer.start()
    gate = Gate(committer)
    try:

        def checked_pay(amount: int) -> Callable[[CardSnapshot | None], Outcome]:
            approve = pay(source, payee, amount)

            def decide(snapshot: CardSnapshot | None) -> Outcome:
                assert snapshot is not None and snapshot.card.member_id == "M0006"
                return approve(snapshot)

            return decide

        def submit_slice(start: int) -> list[concurrent.futures.Future[JobResult]]:
            return [
                committer.submit(job(key(i + 1), checked_pay(amounts[i]), card=card))
                for i in range(start, JOBS, SUBMITTERS)
            ]

        with concurrent.futures.ThreadPoolExecutor(SUBMITTERS) as pool:
            slices = list(pool.map(submit_slice, range(SUBMITTERS)))
        gate.open()
        gate.future.result(FUTURE_TIMEOUT_S)
        results = [f.result(FUTURE_TIMEOUT_S) for futures in slices for f in futures]
    finally:
        gate.open()
        committer.stop()
    assert len(results) == JOBS
    assert all(r.response_code == "00" and not r.replayed and not r.conflict for r in results)
    assert len({r.response_fields[37] for r in results}) == JOBS  # an RRN each
    assert all(len(r.response_fields[38]) == 6 for r in results)  # an approval code each
    assert committer.jobs == JOBS + 1
    assert 2 <= committer.batches < JOBS  # grouped: many jobs per commit
    spent = sum(amounts)
    assert purse(store, "M0006", "GN").balance_credit == 1_000_000_000 - spent
    assert merchant(store).balance_credit == spent
    assert count(store, schema.transactions) == JOBS + 1
    with store.engine.connect() as connection:
        purchases = connection.scalar(
            select(func.count()).where(schema.transfers.c.code == int(TransferCode.PURCHASE))
        )
    assert purchases == JOBS
    assert store.totals().journal_posted == sum(DEMO_PURSES.values()) + spent
    assert_balanced(store)


def test_group_committer_concurrent_purchases_sqlite(demo_store: Store) -> None:
    run_concurrent_purchases(demo_store)


def test_failing_job_does_not_fail_its_batch(demo_store: Store) -> None:
    source = purse(demo_store, "M0001", "GN")
    payee = merchant(demo_store)

    def broken(_snapshot: CardSnapshot | None) -> Outcome:
        raise RuntimeError("decide blew up")

    committer = GroupCommitter(demo_store)
    committer.start()
    gate = Gate(committer)
    try:
        first = committer.submit(job(key(1), pay(source, payee, 100)))
        failing = committer.submit(job(key(2), broken))
        overdraft = committer.submit(job(key(3), pay(source, payee, 50_000_001)))
        last = committer.submit(job(key(4), pay(source, payee, 200)))
        gate.open()
        assert first.result(FUTURE_TIMEOUT_S).response_code == "00"
        assert last.result(FUTURE_TIMEOUT_S).response_code == "00"
        error = failing.exception(FUTURE_TIMEOUT_S)
        rejected = overdraft.exception(FUTURE_TIMEOUT_S)
    finally:
        gate.open()
        committer.stop()
    assert isinstance(error, RuntimeError) and str(error) == "decide blew up"
    assert isinstance(rejected, TransferRejected)
    assert rejected.status is TransferStatus.EXCEEDS_CREDITS
    assert committer.batches == 2  # the gate's, then the other four together
    assert purse(demo_store, "M0001", "GN").balance_credit == 50_000_000 - 300
    assert merchant(demo_store).balance_credit == 300
    # The failed jobs left nothing behind: no stored answer, no transfer.
    assert demo_store.find_transaction(key(2)) is None
    assert demo_store.find_transaction(key(3)) is None
    assert demo_store.find_transaction(key(1)) is not None
    assert count(demo_store, schema.transfers) == len(DEMO_PURSES) + 2
    assert_balanced(demo_store)


def test_overdraft_via_posting_is_rejected_and_changes_nothing(demo_store: Store) -> None:
    source = purse(demo_store, "M0002", "GN")
    payee = merchant(demo_store)
    before = (source, payee, demo_store.totals(), count(demo_store, schema.transactions))
    committer = GroupCommitter(demo_store)
    committer.start()
    try:
        futures = [
            committer.submit(job(key(10 + i), pay(source, payee, amount)))
            for i, amount in enumerate((3_000_001, 10**12))
        ]
        errors = [f.exception(FUTURE_TIMEOUT_S) for f in futures]
    finally:
        committer.stop()
    for error in errors:
        assert isinstance(error, TransferRejected)
        assert error.status is TransferStatus.EXCEEDS_CREDITS
    after = (
        purse(demo_store, "M0002", "GN"),
        merchant(demo_store),
        demo_store.totals(),
        count(demo_store, schema.transactions),
    )
    assert after == before


def test_repeated_key_is_replayed_or_a_conflict(demo_store: Store) -> None:
    source = purse(demo_store, "M0001", "GN")
    payee = merchant(demo_store)

    def must_not_run(_snapshot: CardSnapshot | None) -> Outcome:
        raise AssertionError("a repeated request was decided again")

    committer = GroupCommitter(demo_store)
    committer.start()
    try:
        original = committer.submit(
            job(key(7), pay(source, payee, 1_234), digest="d-original")
        ).result(FUTURE_TIMEOUT_S)
        same = committer.submit(job(key(7), must_not_run, digest="d-original")).result(
            FUTURE_TIMEOUT_S
        )
        different = committer.submit(job(key(7), must_not_run, digest="d-other")).result(
            FUTURE_TIMEOUT_S
        )
    finally:
        committer.stop()
    assert original.response_code == "00" and not original.replayed
    assert set(original.response_fields) >= {37, 38}
    assert same.replayed and not same.conflict
    assert same.response_code == original.response_code
    assert dict(same.response_fields) == dict(original.response_fields)
    assert different.replayed and different.conflict
    assert different.response_code == "94"
    # Money moved once.
    assert purse(demo_store, "M0001", "GN").balance_credit == 50_000_000 - 1_234
    assert count(demo_store, schema.transactions) == 1
    assert_balanced(demo_store)


def test_repeated_key_within_one_batch_is_replayed(demo_store: Store) -> None:
    source = purse(demo_store, "M0001", "GN")
    payee = merchant(demo_store)
    committer = GroupCommitter(demo_store)
    committer.start()
    gate = Gate(committer)
    try:
        futures = [committer.submit(job(key(8), pay(source, payee, 500))) for _ in range(3)]
        gate.open()
        results = [f.result(FUTURE_TIMEOUT_S) for f in futures]
    finally:
        gate.open()
        committer.stop()
    assert [r.replayed for r in results] == [False, True, True]
    assert all(r.response_fields == results[0].response_fields for r in results)
    assert purse(demo_store, "M0001", "GN").balance_credit == 50_000_000 - 500
    assert_balanced(demo_store)


def test_later_job_of_a_batch_reads_and_updates_an_earlier_one(demo_store: Store) -> None:
    """A job sees the request an earlier job of its own batch wrote (by key and by id, with
    its transfer ids), and its update of that request is seen by the next job and stored."""
    source = purse(demo_store, "M0001", "GN")
    payee = merchant(demo_store)
    seen: dict[str, TransactionRecord | None] = {}

    def refer(view: LedgerView) -> Outcome:
        original = view.transaction_by_key(key(21))
        assert original is not None
        seen["by_key"] = original
        seen["by_id"] = view.transaction_by_id(original.id)
        return Outcome("00", updates=((original.id, {"reversed_amount": 300}),))

    def reread(view: LedgerView) -> Outcome:
        original = view.transaction_by_key(key(21))
        seen["after_update"] = original
        return Outcome("00")

    def view_job(
        job_key: TransactionKey, decide: Callable[[LedgerView], Outcome]
    ) -> AuthorizationJob:
        return replace(job(job_key, lambda _snapshot: Outcome("00")), decide=decide)

    committer = GroupCommitter(demo_store)
    committer.start()
    gate = Gate(committer)
    try:
        futures = [
            committer.submit(job(key(21), pay(source, payee, 700))),
            committer.submit(view_job(key(22), refer)),
            committer.submit(view_job(key(23), reread)),
        ]
        gate.open()
        results = [f.result(FUTURE_TIMEOUT_S) for f in futures]
    finally:
        gate.open()
        committer.stop()
    assert [r.response_code for r in results] == ["00", "00", "00"]
    assert committer.batches == 2  # the gate's, then the three together
    by_key, by_id, after = seen["by_key"], seen["by_id"], seen["after_update"]
    assert by_key is not None and by_id == by_key
    assert (by_key.amount, by_key.reversed_amount, by_key.response_code) == (700, 0, "00")
    assert len(by_key.transfer_ids) == 1
    assert after is not None and after.id == by_key.id and after.reversed_amount == 300
    with demo_store.engine.connect() as connection:
        stored = connection.execute(
            select(schema.transactions.c.amount, schema.transactions.c.reversed_amount).where(
                schema.transactions.c.id == by_key.id
            )
        ).one()
        transfer_ids = connection.scalars(
            select(schema.transfers.c.id).where(schema.transfers.c.transaction_id == by_key.id)
        ).all()
    assert tuple(stored) == (700, 300)
    assert tuple(transfer_ids) == by_key.transfer_ids
    assert_balanced(demo_store)


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture
def pg_demo_store(pg_url: str) -> Iterator[Store]:
    ledger = Store(pg_url)
    try:
        assert ledger.migrate() == [version for version, _name, _step in schema.MIGRATIONS]
        assert ledger.schema_version() == max(v for v, _n, _s in schema.MIGRATIONS)
        demo.load_demo(ledger, Hsm(lmk=Lmk.test()))
        yield ledger
    finally:
        ledger.close()


@pytest.mark.postgres
def test_group_committer_concurrent_purchases_postgres(pg_demo_store: Store) -> None:
    run_concurrent_purchases(pg_demo_store)


@pytest.mark.postgres
def test_two_committers_race_on_one_purse_postgres(pg_url: str, pg_demo_store: Store) -> None:
    """Two "processes" (two Stores, two committers) drain the same purse: no overdraft."""
    funds = purse(pg_demo_store, "M0002", "GN").balance_credit
    assert funds == 3_000_000
    amount = 70_000  # funds are not a multiple of it: the last approval leaves a remainder
    per_process = 40  # total demand 2 * 40 * 70,000 = 5,600,000 > 3,000,000
    card = card_id(pg_demo_store, "M0002")
    payee = merchant(pg_demo_store)

    def decide_with_snapshot(snapshot: CardSnapshot | None) -> Outcome:
        # Like the switch: the decision reads the locked, current balance.
        assert snapshot is not None
        general = next(p for p in snapshot.purses if p.code == "GN")
        if general.account.available_credit < amount:
            return Outcome("51", amount=amount)
        posting = Posting(general.account.id, payee.id, amount, TransferCode.PURCHASE)
        return Outcome("00", postings=(posting,), amount=amount)

    stores = [Store(pg_url), Store(pg_url)]
    committers = [GroupCommitter(s, batch_max=8) for s in stores]
    for committer in committers:
        committer.start()
    try:
        barrier = threading.Barrier(len(committers))

        def drive(index: int) -> list[concurrent.futures.Future[JobResult]]:
            barrier.wait(FUTURE_TIMEOUT_S)
            tid = f"HNR0000{index + 1}"
            return [
                committers[index].submit(job(key(n, tid), decide_with_snapshot, card=card))
                for n in range(1, per_process + 1)
            ]

        with concurrent.futures.ThreadPoolExecutor(len(committers)) as pool:
            futures = [f for batch in pool.map(drive, range(len(committers))) for f in batch]
        outcomes: list[str] = []
        for future in futures:
            error = future.exception(FUTURE_TIMEOUT_S)
            if error is None:
                outcomes.append(future.result().response_code)
            else:
                assert isinstance(error, TransferRejected), error
                outcomes.append("rejected")
    finally:
        for committer in committers:
            committer.stop()
        for s in stores:
            s.close()
    approved = outcomes.count("00")
    assert approved == funds // amount  # 42: every rial that could be spent was, and no more
    assert set(outcomes) <= {"00", "51", "rejected"}
    left = purse(pg_demo_store, "M0002", "GN")
    assert left.balance_credit == funds - approved * amount
    assert 0 <= left.balance_credit < amount
    assert merchant(pg_demo_store).balance_credit == approved * amount
    assert_balanced(pg_demo_store)


@pytest.mark.postgres
def test_two_committers_crossing_lock_order_do_not_fail_jobs_postgres(
    pg_url: str, pg_demo_store: Store
) -> None:
    """Process A pays merchant 1 from card X then card Y; process B pays from card Y meanwhile."""
    payee = merchant(pg_demo_store)
    card_x, card_y = card_id(pg_demo_store, "M0001"), card_id(pg_demo_store, "M0006")
    purse_x, purse_y = purse(pg_demo_store, "M0001", "GN"), purse(pg_demo_store, "M0006", "GN")
    store_a, store_b = Store(pg_url), Store(pg_url)
    committer_a, committer_b = GroupCommitter(store_a), GroupCommitter(store_b)
    committer_a.start()
    committer_b.start()
    paused, resume, b_holds_y = threading.Event(), threading.Event(), threading.Event()

    def pause(_snapshot: CardSnapshot | None) -> Outcome:
        paused.set()
        assert resume.wait(FUTURE_TIMEOUT_S)
        return Outcome("00")

    def b_pays_from_y(snapshot: CardSnapshot | None) -> Outcome:
        b_holds_y.set()  # card Y and its purse are locked by B's transaction now
        return pay(purse_y, payee, 300)(snapshot)

    try:
        gate = Gate(committer_a)
        futures = [
            committer_a.submit(job(key(1, "HNR00001"), pay(purse_x, payee, 100), card=card_x)),
            committer_a.submit(job(key(2, "HNR00001"), pause)),
            committer_a.submit(job(key(3, "HNR00001"), pay(purse_y, payee, 200), card=card_y)),
        ]
        gate.open()
        assert paused.wait(FUTURE_TIMEOUT_S)  # A holds card X, purse X and merchant 1
        futures.append(committer_b.submit(job(key(1, "HNR00002"), b_pays_from_y, card=card_y)))
        # The engine locks a batch's cards and accounts in id order before any decision, so
        # B waits for A's commit instead of crossing it (no deadlock to resolve).
        assert not b_holds_y.wait(0.5)
        resume.set()
        errors = [f.exception(FUTURE_TIMEOUT_S) for f in futures]
    finally:
        paused.set()
        resume.set()
        committer_a.stop()
        committer_b.stop()
        store_a.close()
        store_b.close()
    assert_balanced(pg_demo_store)  # whatever happened, the ledger is consistent
    assert errors == [None] * 4
    assert merchant(pg_demo_store).balance_credit == 600


def test_linked_chain_fails_as_a_whole(demo_store: Store) -> None:
    from ledger.model import TransferFlags, TransferStatus

    source = purse(demo_store, "M0002", "GN")  # holds 3,000,000
    payee = merchant(demo_store)
    linked = TransferFlags.LINKED
    chain = [
        Transfer("c1", source.id, payee.id, 1_000_000, 364, TransferCode.PURCHASE, flags=linked),
        Transfer("c2", source.id, payee.id, 5_000_000, 364, TransferCode.PURCHASE, flags=linked),
        Transfer("c3", source.id, payee.id, 1, 364, TransferCode.PURCHASE),
        Transfer("c4", source.id, payee.id, 7, 364, TransferCode.PURCHASE, flags=linked),
    ]
    with demo_store.transaction() as connection:
        statuses = demo_store.create_transfers(
            connection, chain, business_date=BUSINESS_DATE, now=NOW
        )
    assert statuses == [
        TransferStatus.LINKED_EVENT_FAILED,
        TransferStatus.EXCEEDS_CREDITS,
        TransferStatus.LINKED_EVENT_FAILED,
        TransferStatus.LINKED_EVENT_CHAIN_OPEN,
    ]
    assert purse(demo_store, "M0002", "GN").balance_credit == 3_000_000
    with demo_store.transaction() as connection:
        ok = demo_store.create_transfers(
            connection, [chain[0], chain[2]], business_date=BUSINESS_DATE, now=NOW
        )
    assert ok == [TransferStatus.CREATED, TransferStatus.CREATED]
    assert purse(demo_store, "M0002", "GN").balance_credit == 3_000_000 - 1_000_001
    assert demo_store.verify_journal() is None
    assert_balanced(demo_store)


def test_hold_post_void_and_expiry_in_the_store(demo_store: Store) -> None:
    from ledger.model import TransferFlags, TransferStatus

    source = purse(demo_store, "M0002", "GN")
    payee = merchant(demo_store)
    pending = TransferFlags.PENDING

    def create(*transfers: Transfer, now: str = NOW) -> list[TransferStatus]:
        with demo_store.transaction() as connection:
            return demo_store.create_transfers(
                connection, transfers, business_date=BUSINESS_DATE, now=now
            )

    hold = Transfer(
        "h1",
        source.id,
        payee.id,
        1_000_000,
        364,
        TransferCode.PURCHASE,
        flags=pending,
        timeout_s=60,
    )
    assert create(hold) == [TransferStatus.CREATED]
    assert purse(demo_store, "M0002", "GN").available_credit == 2_000_000
    post = Transfer(
        "p1",
        source.id,
        payee.id,
        400_000,
        364,
        TransferCode.PURCHASE,
        flags=TransferFlags.POST_PENDING,
        pending_id="h1",
    )
    assert create(post) == [TransferStatus.CREATED]
    assert create(replace(post, id="p2")) == [TransferStatus.PENDING_TRANSFER_ALREADY_POSTED]
    account = purse(demo_store, "M0002", "GN")
    assert (account.balance_credit, account.available_credit) == (2_600_000, 2_600_000)
    hold2 = replace(hold, id="h2")
    assert create(hold2) == [TransferStatus.CREATED]
    void = replace(post, id="v2", amount=0, flags=TransferFlags.VOID_PENDING, pending_id="h2")
    assert create(void) == [TransferStatus.CREATED]
    assert purse(demo_store, "M0002", "GN").available_credit == 2_600_000
    hold3 = replace(hold, id="h3")
    assert create(hold3) == [TransferStatus.CREATED]
    later = "2026-05-01T09:00:00+00:00"  # an hour after NOW: past the 60 s timeout
    assert create(replace(post, id="p3", pending_id="h3"), now=later) == [
        TransferStatus.PENDING_TRANSFER_EXPIRED
    ]
    assert demo_store.expire_pending(later, business_date=BUSINESS_DATE) == ["h3"]
    assert purse(demo_store, "M0002", "GN").available_credit == 2_600_000
    assert demo_store.expire_pending(later, business_date=BUSINESS_DATE) == []
    assert demo_store.verify_journal() is None
    assert_balanced(demo_store)


def test_journal_detects_an_edited_transfer(demo_store: Store) -> None:
    assert demo_store.verify_journal() is None
    seq, head = demo_store.journal_head()
    assert seq > 0 and len(head) == 64
    with demo_store.engine.begin() as connection:
        connection.execute(
            schema.transfers.update().where(schema.transfers.c.seq == 3).values(amount=1)
        )
    broken = demo_store.verify_journal()
    assert broken is not None and broken[0] == 3 and "altered" in broken[1]
