"""Ledger storage: SQLAlchemy Core on SQLite (embedded, WAL) or PostgreSQL. SQLAlchemy lives here.

Theory of operation:

* :class:`Store` owns the engine. SQLite runs in WAL mode with ``synchronous=FULL`` so that a
  commit is on disk before anyone hears "approved"; PostgreSQL uses row locks
  (``SELECT ... FOR UPDATE``) so several switch processes can share one ledger.
* Setup and admin operations are plain methods, each one database transaction.
* Authorizations go through :class:`GroupCommitter`: one thread takes as many queued jobs as are
  waiting (up to ``batch_max``), runs each inside a savepoint of one database transaction, commits
  once, and only then resolves the jobs' futures. A job that fails rolls back its own savepoint
  only; a failed commit fails every job of the batch and applies nothing.
* Transfers are validated by :func:`ledger.model.check_transfer` first, then applied; the SQL
  update repeats the balance guard so that no race can overdraw a purse.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from ledger import schema
from ledger.domain import (
    AuthorizationJob,
    CardRecord,
    CardSnapshot,
    JobResult,
    Posting,
    Purse,
    StoredTransaction,
    TransactionKey,
)
from ledger.model import (
    Account,
    AccountFlags,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferStatus,
    check_transfer,
)

log = logging.getLogger("honar.ledger")

# PostgreSQL deadlock_detected and serialization_failure: the job is retried after the commit.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
LOCK_RETRIES_MAX = 5

ACCOUNT_COLUMNS = (
    schema.accounts.c.id,
    schema.accounts.c.code,
    schema.accounts.c.ledger,
    schema.accounts.c.flags,
    schema.accounts.c.debits_pending,
    schema.accounts.c.debits_posted,
    schema.accounts.c.credits_pending,
    schema.accounts.c.credits_posted,
)


class LedgerError(RuntimeError):
    """A storage operation that could not be carried out; nothing of it was applied."""


class TransferRejected(LedgerError):
    """A transfer failed its checks inside a transaction that must therefore roll back."""

    def __init__(self, status: TransferStatus, transfer: Transfer) -> None:
        super().__init__(f"transfer {transfer.id} rejected: {status.value}")
        self.status = status


@dataclass(frozen=True)
class TerminalRecord:
    """A terminal and its keys (under the LMK)."""

    id: str
    merchant_id: str
    key_scheme: str
    tmk: str
    tpk: str
    tak: str
    bdk: str


@dataclass(frozen=True)
class MerchantRecord:
    """A merchant as stored."""

    id: str
    name: str
    mcc: str
    city: str
    chain: str
    sheba: str
    payable_account_id: int


@dataclass(frozen=True)
class Totals:
    """Sums over all accounts; debits equal credits in a sound ledger."""

    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    journal_posted: int  # sum of posted transfer amounts

    @property
    def balanced(self) -> bool:
        """True when debits equal credits (posted and pending) and agree with the journal."""
        return (
            self.debits_posted == self.credits_posted == self.journal_posted
            and self.debits_pending == self.credits_pending
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT; we emit BEGIN ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_ledger_engine(url: str) -> Engine:
    """An engine for ``url`` set up for the ledger (SQLite pragmas, pool sizes)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False}, pool_size=8, max_overflow=8
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_size=8, max_overflow=8, pool_pre_ping=True)
    raise LedgerError(f"ledger URL {url!r}: only sqlite:// and postgresql:// are supported")


def transfer_digest(job_key: TransactionKey, index: int) -> str:
    """A deterministic transfer id for the ``index``-th posting of a request."""
    raw = f"{job_key.tid}|{job_key.stan}|{job_key.transmission}|{index}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class Store:
    """The ledger database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_ledger_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    def close(self) -> None:
        """Release all connections."""
        self.engine.dispose()

    # --- schema -----------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply the missing schema migrations in order; return the versions applied."""
        applied: list[int] = []
        with self.engine.begin() as connection:
            schema.metadata.create_all(connection, tables=[schema.schema_migrations])
        for version, name, step in schema.MIGRATIONS:
            with self.engine.begin() as connection:
                if version in schema.applied_versions(connection):
                    continue
                schema.run_migration(connection, version, name, step)
                applied.append(version)
                log.info("schema migration applied", extra={"version": version, "migration": name})
        return applied

    def schema_version(self) -> int:
        """The highest applied migration (0 for a new database)."""
        with self.engine.connect() as connection:
            return max(schema.applied_versions(connection), default=0)

    def setting(self, key: str) -> str | None:
        """A stored setting (e.g. ``pvk``, the issuer's PVK under the LMK)."""
        with self.engine.connect() as connection:
            value = connection.scalar(
                select(schema.settings.c.value).where(schema.settings.c.key == key)
            )
        return None if value is None else str(value)

    def is_empty(self) -> bool:
        """True when no member exists yet."""
        with self.engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(schema.members)) == 0

    # --- accounts and transfers ---------------------------------------------------------------

    def create_account(
        self, connection: Connection, code: str, flags: AccountFlags, ledger: int = 364
    ) -> int:
        """Create an account inside ``connection``'s transaction; return its id."""
        result = connection.execute(
            schema.accounts.insert().values(
                code=code,
                ledger=ledger,
                flags=int(flags),
                debits_pending=0,
                debits_posted=0,
                credits_pending=0,
                credits_posted=0,
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])

    def account(self, account_id: int) -> Account:
        """Read one account."""
        with self.engine.connect() as connection:
            found = self._accounts(connection, [account_id], lock=False)
        if account_id not in found:
            raise LedgerError(f"account {account_id} not found")
        return found[account_id]

    def account_by_code(self, code: str) -> Account:
        """Read one account by its code (e.g. ``program:FUND-GEN``)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(*ACCOUNT_COLUMNS).where(schema.accounts.c.code == code)
            ).one_or_none()
        if row is None:
            raise LedgerError(f"account {code!r} not found")
        return _account(row)

    def _accounts(
        self, connection: Connection, ids: Iterable[int], *, lock: bool
    ) -> dict[int, Account]:
        query = select(*ACCOUNT_COLUMNS).where(schema.accounts.c.id.in_(sorted(set(ids))))
        if lock and not self.is_sqlite:
            query = query.order_by(schema.accounts.c.id).with_for_update()
        return {row.id: _account(row) for row in connection.execute(query)}

    def post_transfer(
        self,
        connection: Connection,
        transfer: Transfer,
        *,
        business_date: str,
        now: str,
        transaction_id: int | None = None,
    ) -> TransferStatus:
        """Validate then apply one transfer inside ``connection``'s transaction.

        Returns the status; anything but CREATED or EXISTS leaves the database untouched.
        """
        existing_row = connection.execute(
            select(schema.transfers).where(schema.transfers.c.id == transfer.id)
        ).one_or_none()
        existing = None if existing_row is None else _transfer(existing_row)
        found = self._accounts(
            connection, [transfer.debit_account_id, transfer.credit_account_id], lock=True
        )
        status = check_transfer(
            transfer,
            found.get(transfer.debit_account_id),
            found.get(transfer.credit_account_id),
            existing,
        )
        if status is not TransferStatus.CREATED:
            return status
        # After this point the transfer must succeed: the guards below only catch races.
        pending = bool(transfer.flags & TransferFlags.PENDING)
        a = schema.accounts.c
        debit_column = a.debits_pending if pending else a.debits_posted
        credit_column = a.credits_pending if pending else a.credits_posted
        guard = (a.flags.op("&")(int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)) == 0) | (
            a.debits_posted + a.debits_pending + transfer.amount <= a.credits_posted
        )
        result = connection.execute(
            update(schema.accounts)
            .where(a.id == transfer.debit_account_id, guard)
            .values({debit_column: debit_column + transfer.amount})
        )
        if result.rowcount != 1:
            raise TransferRejected(TransferStatus.EXCEEDS_CREDITS, transfer)
        connection.execute(
            update(schema.accounts)
            .where(a.id == transfer.credit_account_id)
            .values({credit_column: credit_column + transfer.amount})
        )
        connection.execute(
            schema.transfers.insert().values(
                id=transfer.id,
                debit_account_id=transfer.debit_account_id,
                credit_account_id=transfer.credit_account_id,
                amount=transfer.amount,
                ledger=transfer.ledger,
                code=int(transfer.code),
                flags=int(transfer.flags),
                pending_id=transfer.pending_id,
                user_data=transfer.user_data,
                transaction_id=transaction_id,
                business_date=business_date,
                created_at=now,
            )
        )
        return status

    def totals(self) -> Totals:
        """Sums of all accounts' debits and credits, and of the posted transfer journal."""
        a, t = schema.accounts.c, schema.transfers.c
        with self.engine.connect() as connection:
            row = connection.execute(
                select(
                    func.coalesce(func.sum(a.debits_posted), 0),
                    func.coalesce(func.sum(a.credits_posted), 0),
                    func.coalesce(func.sum(a.debits_pending), 0),
                    func.coalesce(func.sum(a.credits_pending), 0),
                )
            ).one()
            journal = connection.scalar(
                select(func.coalesce(func.sum(t.amount), 0)).where(
                    t.flags.op("&")(int(TransferFlags.PENDING)) == 0
                )
            )
        return Totals(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(journal or 0))

    # --- reads for the switch -----------------------------------------------------------------

    def find_card(self, pan_hash: str) -> CardRecord | None:
        """The card whose keyed PAN hash is ``pan_hash``."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(schema.cards).where(schema.cards.c.pan_hash == pan_hash)
            ).one_or_none()
        return None if row is None else _card(row)

    def find_transaction(self, key: TransactionKey) -> StoredTransaction | None:
        """The stored answer to the request with ``key``, if any."""
        with self.engine.connect() as connection:
            return self._find_transaction(connection, key)

    def _find_transaction(
        self, connection: Connection, key: TransactionKey
    ) -> StoredTransaction | None:
        t = schema.transactions.c
        row = connection.execute(
            select(schema.transactions).where(
                t.tid == key.tid, t.stan == key.stan, t.transmission == key.transmission
            )
        ).one_or_none()
        if row is None:
            return None
        return StoredTransaction(
            id=row.id,
            key=key,
            mti=row.mti,
            request_digest=row.request_digest,
            response_code=row.response_code,
            response_fields={int(k): v for k, v in json.loads(row.response_json).items()},
        )

    def card_snapshot(
        self, connection: Connection, card_id: int, *, lock: bool
    ) -> CardSnapshot | None:
        """The card and its member's purses (accounts locked on PostgreSQL when ``lock``)."""
        query = select(schema.cards).where(schema.cards.c.id == card_id)
        if lock and not self.is_sqlite:
            query = query.with_for_update()
        row = connection.execute(query).one_or_none()
        if row is None:
            return None
        card = _card(row)
        p, k = schema.purses.c, schema.purse_kinds.c
        purse_rows = connection.execute(
            select(
                p.code, p.account_id, p.program_code, p.expires, k.chains, k.merchant_ids, k.mccs
            )
            .select_from(schema.purses.outerjoin(schema.purse_kinds, k.code == p.code))
            .where(p.member_id == card.member_id)
            .order_by(p.code)
        ).all()
        found = self._accounts(connection, [r.account_id for r in purse_rows], lock=lock)
        purses = tuple(
            Purse(
                code=r.code,
                account=found[r.account_id],
                program_code=r.program_code,
                expires=r.expires,
                chains=_split(r.chains),
                merchant_ids=_split(r.merchant_ids),
                mccs=_split(r.mccs),
            )
            for r in purse_rows
        )
        return CardSnapshot(card=card, purses=purses)

    def snapshot(self, card_id: int) -> CardSnapshot | None:
        """A card snapshot outside any authorization (for tools and tests)."""
        with self.engine.connect() as connection:
            return self.card_snapshot(connection, card_id, lock=False)

    def terminals(self) -> list[TerminalRecord]:
        """All terminals."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(schema.terminals)).all()
        return [
            TerminalRecord(r.id, r.merchant_id, r.key_scheme, r.tmk, r.tpk, r.tak, r.bdk)
            for r in rows
        ]

    def merchants(self) -> list[MerchantRecord]:
        """All merchants."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(schema.merchants)).all()
        return [
            MerchantRecord(r.id, r.name, r.mcc, r.city, r.chain, r.sheba, r.payable_account_id)
            for r in rows
        ]

    def set_terminal_keys(self, tid: str, *, tpk: str, tak: str) -> None:
        """Store new working keys (under the LMK) for a terminal."""
        with self.engine.begin() as connection:
            connection.execute(
                update(schema.terminals)
                .where(schema.terminals.c.id == tid)
                .values(tpk=tpk, tak=tak)
            )

    # --- authorization --------------------------------------------------------------------------

    def run_job(self, connection: Connection, job: AuthorizationJob) -> JobResult:
        """Run one authorization job inside ``connection``'s (savepoint) transaction."""
        stored = self._find_transaction(connection, job.key)
        if stored is not None:
            return replayed_result(stored, job.request_digest)
        snapshot = None
        if job.card_id is not None:
            snapshot = self.card_snapshot(connection, job.card_id, lock=True)
        outcome = job.decide(snapshot)
        if outcome.pin_failures is not None and snapshot is not None:
            connection.execute(
                update(schema.cards)
                .where(schema.cards.c.id == snapshot.card.id)
                .values(pin_failures=outcome.pin_failures)
            )
        result = connection.execute(
            schema.transactions.insert().values(
                tid=job.key.tid,
                stan=job.key.stan,
                transmission=job.key.transmission,
                mti=job.mti,
                kind=job.kind,
                request_digest=job.request_digest,
                card_id=job.card_id,
                merchant_id=job.merchant_id,
                pan_masked=job.pan_masked,
                amount=outcome.amount,
                response_code=outcome.response_code,
                response_json="{}",
                business_date=job.business_date,
                created_at=job.now,
            )
        )
        assert result.inserted_primary_key is not None
        transaction_id = int(result.inserted_primary_key[0])
        self._post_outcome(connection, job, outcome.postings, transaction_id)
        fields = dict(outcome.response_fields)
        rrn = fields.get(37) or (f"{transaction_id:012d}" if job.assign_rrn else "")
        if rrn:
            fields[37] = rrn
        auth_id = ""
        if outcome.response_code == "00" and outcome.postings:
            auth_id = hashlib.sha256(f"{transaction_id}|{job.key}".encode()).hexdigest()
            auth_id = f"{int(auth_id[:8], 16) % 1_000_000:06d}"
            fields[38] = auth_id
        connection.execute(
            update(schema.transactions)
            .where(schema.transactions.c.id == transaction_id)
            .values(
                rrn=rrn,
                auth_id=auth_id,
                response_json=json.dumps({str(k): v for k, v in sorted(fields.items())}),
            )
        )
        return JobResult(outcome.response_code, fields)

    def _post_outcome(
        self,
        connection: Connection,
        job: AuthorizationJob,
        postings: Sequence[Posting],
        transaction_id: int,
    ) -> None:
        for index, posting in enumerate(postings):
            transfer = Transfer(
                id=transfer_digest(job.key, index),
                debit_account_id=posting.debit_account_id,
                credit_account_id=posting.credit_account_id,
                amount=posting.amount,
                ledger=364,
                code=posting.code,
            )
            status = self.post_transfer(
                connection,
                transfer,
                business_date=job.business_date,
                now=job.now,
                transaction_id=transaction_id,
            )
            if status is not TransferStatus.CREATED:
                raise TransferRejected(status, transfer)


def replayed_result(stored: StoredTransaction, request_digest: str) -> JobResult:
    """The answer to a request whose key was seen before: the original, or a conflict (94)."""
    if stored.request_digest != request_digest:
        return JobResult("94", {}, replayed=True, conflict=True)
    return JobResult(stored.response_code, stored.response_fields, replayed=True)


class GroupCommitter:
    """Runs authorization jobs in batches: one commit for many, answers only after it."""

    def __init__(self, store: Store, *, batch_max: int = 256) -> None:
        assert batch_max > 0
        self.store = store
        self.batch_max = batch_max
        self._queue: queue.SimpleQueue[
            tuple[AuthorizationJob, concurrent.futures.Future[JobResult]] | None
        ]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-commit", daemon=True)
        self.batches = 0
        self.jobs = 0
        self.lock_retries = 0
        self._started = False

    def start(self) -> None:
        """Start the commit thread."""
        self._started = True
        self._thread.start()

    def submit(self, job: AuthorizationJob) -> concurrent.futures.Future[JobResult]:
        """Queue a job; the future resolves after its batch has committed (or failed)."""
        assert self._started, "GroupCommitter.start() first"
        future: concurrent.futures.Future[JobResult] = concurrent.futures.Future()
        self._queue.put((job, future))
        return future

    def stop(self) -> None:
        """Finish every queued job, then stop the thread."""
        if self._started:
            self._queue.put(None)
            self._thread.join()
            self._started = False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= self.batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if item is None:
                stopping = True
            if batch:
                self._commit_batch(batch)

    def _run_one(
        self, connection: Connection, job: AuthorizationJob
    ) -> JobResult | BaseException | None:
        """Run one job in a savepoint. None means "lock conflict: run it again after commit"."""
        savepoint = connection.begin_nested()
        try:
            result = self.store.run_job(connection, job)
        except IntegrityError:
            # Another process stored the same request key first: answer as a retransmission.
            savepoint.rollback()
            stored = self.store._find_transaction(connection, job.key)
            if stored is None:
                return LedgerError(f"integrity error for {job.key} and no stored answer")
            return replayed_result(stored, job.request_digest)
        except OperationalError as error:
            savepoint.rollback()
            if getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
                # Another process's batch holds a lock this job needs while waiting for one an
                # earlier job of ours holds. Give the job's locks back; retry after our commit.
                return None
            log.exception(
                "authorization job failed, rolled back",
                extra={"tid": job.key.tid, "stan": job.key.stan},
            )
            return LedgerError(f"database error: {error.orig}")
        except Exception as error:  # one job's failure (even a bug) must not fail its batch
            savepoint.rollback()
            log.exception(
                "authorization job failed, rolled back",
                extra={"tid": job.key.tid, "stan": job.key.stan},
            )
            return error
        savepoint.commit()
        return result

    def _commit_batch(
        self,
        batch: list[tuple[AuthorizationJob, concurrent.futures.Future[JobResult]]],
        attempt: int = 1,
    ) -> None:
        results: list[JobResult | BaseException | None] = []
        try:
            with self.store.engine.begin() as connection:
                for job, _future in batch:
                    results.append(self._run_one(connection, job))
        except SQLAlchemyError as error:
            log.exception("ledger commit failed; batch of %d not applied", len(batch))
            for _job, future in batch:
                future.set_exception(LedgerError(f"commit failed: {error}"))
            return
        self.batches += 1
        again = []
        for item, result in zip(batch, results, strict=True):
            if result is None:
                again.append(item)
            elif isinstance(result, BaseException):
                item[1].set_exception(result)
            else:
                self.jobs += 1
                item[1].set_result(result)
        if again and attempt >= LOCK_RETRIES_MAX:
            for _job, future in again:
                future.set_exception(LedgerError("lock conflicts persisted; job not applied"))
        elif again:
            self.lock_retries += len(again)
            self._commit_batch(again, attempt + 1)


def _split(value: str | None) -> frozenset[str]:
    return frozenset(v for v in (value or "").split(",") if v)


def _account(row: Any) -> Account:
    return Account(
        id=row.id,
        code=row.code,
        ledger=row.ledger,
        flags=AccountFlags(row.flags),
        debits_pending=row.debits_pending,
        debits_posted=row.debits_posted,
        credits_pending=row.credits_pending,
        credits_posted=row.credits_posted,
    )


def _transfer(row: Any) -> Transfer:
    return Transfer(
        id=row.id,
        debit_account_id=row.debit_account_id,
        credit_account_id=row.credit_account_id,
        amount=row.amount,
        ledger=row.ledger,
        code=TransferCode(row.code),
        flags=TransferFlags(row.flags),
        pending_id=row.pending_id,
        user_data=row.user_data,
    )


def _card(row: Any) -> CardRecord:
    return CardRecord(
        id=row.id,
        member_id=row.member_id,
        pan_masked=row.pan_masked,
        expiry=row.expiry,
        service_code=row.service_code,
        pvki=row.pvki,
        pvv=row.pvv,
        state=row.state,
        pin_failures=row.pin_failures,
        daily_amount_max=row.daily_amount_max,
        daily_count_max=row.daily_count_max,
        payment_amount_max=row.payment_amount_max,
        pin_tries_max=row.pin_tries_max,
    )
