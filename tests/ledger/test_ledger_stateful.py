"""The ledger against a simple in-memory model: random holds, posts, voids, expiries, linked chains,
refunds and retries (a hypothesis rule-based state machine).

After every step: each account's four totals equal the model's, debits equal credits over the
whole ledger, no constrained account is negative, and the journal hash chain verifies. Runs on
SQLite always and on PostgreSQL (a fresh database; under CI=true a missing server fails).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ledger.model import AccountFlags, Transfer, TransferCode, TransferFlags, TransferStatus
from ledger.store import Store

from conftest import fresh_postgres_database

ACCOUNTS = 4  # 0: program (unconstrained), 1-2: purses, 3: merchant payable (both constrained)
AMOUNT_MAX = 300
CLOCK_START = datetime(2026, 5, 1, tzinfo=UTC)
SETTINGS = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

S = TransferStatus


@dataclass
class ModelAccount:
    id: int
    constrained: bool
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


@dataclass
class ModelHold:
    transfer: Transfer
    expires_at: datetime | None
    state: str = "pending"  # pending | posted | voided | expired


class LedgerMachine(RuleBasedStateMachine):
    """One machine instance: its own accounts in the shared ledger, and a clock of its own."""

    store: Store
    clock: datetime = CLOCK_START  # shared and only moving forward, across instances

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:10]
        self.accounts: list[ModelAccount] = []
        self.holds: dict[str, ModelHold] = {}
        self.created: dict[str, Transfer] = {}  # every transfer the ledger accepted
        self.posted_plain: list[Transfer] = []  # plain transfers that may be refunded
        self.count = 0
        LedgerMachine.clock += timedelta(days=30)  # past every hold of earlier instances

    # --- helpers ------------------------------------------------------------------------------

    @property
    def now(self) -> str:
        return LedgerMachine.clock.isoformat()

    def new_id(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count}"

    def submit(self, transfers: list[Transfer]) -> list[TransferStatus]:
        with self.store.transaction() as connection:
            return self.store.create_transfers(
                connection, transfers, business_date=self.now[:10], now=self.now
            )

    def transfer(
        self,
        debit: int,
        credit: int,
        amount: int,
        *,
        flags: TransferFlags = TransferFlags.NONE,
        pending_id: str | None = None,
        timeout_s: int = 0,
        code: TransferCode = TransferCode.PURCHASE,
    ) -> Transfer:
        return Transfer(
            id=self.new_id(),
            debit_account_id=self.accounts[debit].id,
            credit_account_id=self.accounts[credit].id,
            amount=amount,
            ledger=364,
            code=code,
            flags=flags,
            pending_id=pending_id,
            timeout_s=timeout_s,
        )

    def by_id(self, accounts: dict[int, ModelAccount], account_id: int) -> ModelAccount:
        return accounts[account_id]

    def expect(self, transfer: Transfer, accounts: dict[int, ModelAccount]) -> TransferStatus:
        """The model's verdict on one transfer, applying it to ``accounts`` when accepted."""
        existing = self.created.get(transfer.id)
        if existing is not None:
            return S.EXISTS if existing == transfer else S.EXISTS_WITH_DIFFERENT_FIELDS
        debit = accounts[transfer.debit_account_id]
        credit = accounts[transfer.credit_account_id]
        if transfer.flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING):
            assert transfer.pending_id is not None
            hold = self.holds[transfer.pending_id]
            expired = hold.expires_at is not None and hold.expires_at <= LedgerMachine.clock
            if hold.state == "posted":
                return S.PENDING_TRANSFER_ALREADY_POSTED
            if hold.state == "voided":
                return S.PENDING_TRANSFER_ALREADY_VOIDED
            if hold.state == "expired" or expired:
                return S.PENDING_TRANSFER_EXPIRED
            if transfer.amount > hold.transfer.amount:
                return S.EXCEEDS_PENDING_TRANSFER_AMOUNT
            posted = 0
            if transfer.flags & TransferFlags.POST_PENDING:
                posted = transfer.amount or hold.transfer.amount
            debit.debits_pending -= hold.transfer.amount
            credit.credits_pending -= hold.transfer.amount
            debit.debits_posted += posted
            credit.credits_posted += posted
            return S.CREATED
        if transfer.amount <= 0:
            return S.AMOUNT_MUST_BE_POSITIVE
        if debit.id == credit.id:
            return S.ACCOUNTS_MUST_BE_DIFFERENT
        if debit.constrained and (
            debit.debits_posted + debit.debits_pending + transfer.amount > debit.credits_posted
        ):
            return S.EXCEEDS_CREDITS
        if transfer.flags & TransferFlags.PENDING:
            debit.debits_pending += transfer.amount
            credit.credits_pending += transfer.amount
        else:
            debit.debits_posted += transfer.amount
            credit.credits_posted += transfer.amount
        return S.CREATED

    def run(self, chain: list[Transfer]) -> list[TransferStatus]:
        """Submit a chain (or one transfer) to the ledger and to the model; compare verdicts."""
        statuses = self.submit(chain)
        if chain[-1].flags & TransferFlags.LINKED:
            expected = [S.LINKED_EVENT_CHAIN_OPEN] * len(chain)
        else:
            trial = {a.id: replace(a) for a in self.accounts}
            expected = []
            for index, transfer in enumerate(chain):
                status = self.expect(transfer, trial)
                if status not in (S.CREATED, S.EXISTS):
                    expected = [S.LINKED_EVENT_FAILED] * len(chain)
                    expected[index] = status
                    break
                expected.append(status)
            else:
                self.accounts = [trial[a.id] for a in self.accounts]
                for transfer, status in zip(chain, expected, strict=True):
                    if status is S.CREATED:
                        self.accepted(transfer)
        assert statuses == expected, (chain, statuses, expected)
        return statuses

    def accepted(self, transfer: Transfer) -> None:
        self.created[transfer.id] = transfer
        if transfer.flags & TransferFlags.PENDING:
            expires = None
            if transfer.timeout_s:
                expires = LedgerMachine.clock + timedelta(seconds=transfer.timeout_s)
            self.holds[transfer.id] = ModelHold(transfer, expires)
        elif transfer.pending_id is not None:
            hold = self.holds[transfer.pending_id]
            hold.state = "posted" if transfer.flags & TransferFlags.POST_PENDING else "voided"
        else:
            self.posted_plain.append(transfer)

    # --- rules --------------------------------------------------------------------------------

    @initialize()
    def open_accounts(self) -> None:
        with self.store.transaction() as connection:
            for index in range(ACCOUNTS):
                constrained = index != 0
                flags = (
                    AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                    if constrained
                    else AccountFlags.NONE
                )
                account_id = self.store.create_account(
                    connection, f"stateful:{self.prefix}:{index}", flags
                )
                self.accounts.append(ModelAccount(account_id, constrained))

    @rule(
        debit=st.integers(0, ACCOUNTS - 1),
        credit=st.integers(0, ACCOUNTS - 1),
        amount=st.integers(0, AMOUNT_MAX),
    )
    def pay(self, debit: int, credit: int, amount: int) -> None:
        self.run([self.transfer(debit, credit, amount)])

    @rule(purse=st.integers(1, 2), amount=st.integers(1, AMOUNT_MAX))
    def disburse(self, purse: int, amount: int) -> None:
        self.run([self.transfer(0, purse, amount, code=TransferCode.DISBURSEMENT)])

    @rule(
        debit=st.integers(0, ACCOUNTS - 1),
        credit=st.integers(0, ACCOUNTS - 1),
        amount=st.integers(1, AMOUNT_MAX),
        timeout_s=st.sampled_from([0, 5, 60, 600]),
    )
    def hold(self, debit: int, credit: int, amount: int, timeout_s: int) -> None:
        transfer = self.transfer(
            debit, credit, amount, flags=TransferFlags.PENDING, timeout_s=timeout_s
        )
        self.run([transfer])

    @rule(data=st.data(), how=st.sampled_from(["full", "zero", "partial", "over", "void"]))
    def resolve(self, data: st.DataObject, how: str) -> None:
        if not self.holds:
            return
        pending_id = data.draw(st.sampled_from(sorted(self.holds)))
        pending = self.holds[pending_id].transfer
        amount = {
            "full": pending.amount,
            "zero": 0,
            "partial": max(1, pending.amount // 2),
            "over": pending.amount + 1,
            "void": 0,
        }[how]
        flags = TransferFlags.VOID_PENDING if how == "void" else TransferFlags.POST_PENDING
        resolution = replace(
            pending,
            id=self.new_id(),
            amount=amount,
            flags=flags,
            pending_id=pending_id,
            timeout_s=0,
        )
        self.run([resolution])

    @rule(seconds=st.integers(1, 120))
    def advance_and_expire(self, seconds: int) -> None:
        LedgerMachine.clock += timedelta(seconds=seconds)
        expired: list[str] = []
        while True:
            batch = self.store.expire_pending(self.now, business_date=self.now[:10], limit=500)
            expired.extend(batch)
            if len(batch) < 500:
                break
        ours = {i for i in expired if i in self.holds}
        for pending_id, hold in self.holds.items():
            due = hold.expires_at is not None and hold.expires_at <= LedgerMachine.clock
            if hold.state == "pending" and due:
                assert pending_id in ours, pending_id
                hold.state = "expired"
                debit = next(a for a in self.accounts if a.id == hold.transfer.debit_account_id)
                credit = next(a for a in self.accounts if a.id == hold.transfer.credit_account_id)
                debit.debits_pending -= hold.transfer.amount
                credit.credits_pending -= hold.transfer.amount
                self.created[f"expire:{pending_id}"] = Transfer(
                    f"expire:{pending_id}", 0, 0, 0, 364, TransferCode.EXPIRY
                )
            else:
                assert pending_id not in ours, pending_id

    @rule(
        legs=st.lists(
            st.tuples(
                st.integers(0, ACCOUNTS - 1),
                st.integers(0, ACCOUNTS - 1),
                st.integers(1, AMOUNT_MAX),
                st.booleans(),
            ),
            min_size=2,
            max_size=3,
        ),
        close=st.integers(0, 9),
    )
    def linked_chain(self, legs: list[tuple[int, int, int, bool]], close: int) -> None:
        chain = []
        for index, (debit, credit, amount, pending) in enumerate(legs):
            flags = TransferFlags.PENDING if pending else TransferFlags.NONE
            if index < len(legs) - 1 or close == 0:  # one chain in ten is left open
                flags |= TransferFlags.LINKED
            chain.append(self.transfer(debit, credit, amount, flags=flags))
        self.run(chain)

    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        if not self.posted_plain:
            return
        original = data.draw(st.sampled_from(self.posted_plain))
        amount = data.draw(st.integers(1, original.amount))
        refund = Transfer(
            id=self.new_id(),
            debit_account_id=original.credit_account_id,
            credit_account_id=original.debit_account_id,
            amount=amount,
            ledger=364,
            code=TransferCode.REFUND,
            user_data=f"refund of {original.id}",
        )
        self.run([refund])

    @rule(data=st.data(), different=st.booleans())
    def retry(self, data: st.DataObject, different: bool) -> None:
        ours = sorted(i for i in self.created if not i.startswith("expire:"))
        if not ours:
            return
        original = self.created[data.draw(st.sampled_from(ours))]
        again = replace(original, amount=original.amount + 1) if different else original
        self.run([again])

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def balances_equal_the_model(self) -> None:
        for model in self.accounts:
            account = self.store.account(model.id)
            actual = (
                account.debits_pending,
                account.debits_posted,
                account.credits_pending,
                account.credits_posted,
            )
            expected = (
                model.debits_pending,
                model.debits_posted,
                model.credits_pending,
                model.credits_posted,
            )
            assert actual == expected, (model.id, actual, expected)
            if model.constrained:
                assert account.available_credit >= 0, account

    @invariant()
    def debits_equal_credits_and_the_journal_verifies(self) -> None:
        totals = self.store.totals()
        assert totals.balanced, totals
        assert self.store.verify_journal() is None


def run_machine(url: str) -> None:
    store = Store(url)
    try:
        store.migrate()
        LedgerMachine.store = store
        run_state_machine_as_test(LedgerMachine, settings=SETTINGS)
    finally:
        store.close()


def test_ledger_state_machine_sqlite(tmp_path: Path) -> None:
    run_machine(f"sqlite:///{tmp_path / 'stateful.db'}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.mark.postgres
def test_ledger_state_machine_postgres(pg_url: str) -> None:
    run_machine(pg_url)
