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

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from ledger import schema
from ledger.domain import (
    AuthorizationJob,
    CardRecord,
    JobResult,
    Posting,
    Purse,
    StoredTransaction,
    TerminalTotals,
    TransactionKey,
    TransactionRecord,
)
from ledger.jsonenc import json_encoder
from ledger.model import (
    Account,
    AccountFlags,
    PendingState,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferStatus,
    check_transfer,
    effective_pending_state,
    posted_amount,
)

log = logging.getLogger("honar.ledger")

# PostgreSQL deadlock_detected and serialization_failure: the job is retried after the commit.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
WRITE_TRANSACTION = "honar_write"  # connection.info flag: BEGIN IMMEDIATE on SQLite
NEW_TRANSFERS = "honar_new_transfers"  # connection.info key: transfers to seal into the journal
EVENT_SCHEMA_VERSION = 1  # the events' payload format version (their ``schema`` field)
TOPIC_DISBURSEMENTS_BATCH = "disbursements/batch"
TOPIC_SETTLEMENT_CUTOVER = "settlement/cutover"
TOPIC_KEYS_EXCHANGE = "keys/exchange"
TOPIC_ALERTS_VELOCITY = "alerts/velocity"
TOPIC_HOLDS_EXPIRED = "holds/expired"
TOPIC_TRANSACTIONS_PREFIX = "transactions/"
# How every writer of the outbox (Store.add_event, ledger.outbox.add_event, the engine's
# decisions) encodes an event's payload: sorted keys, UTF-8 text as is.
EVENT_JSON = json_encoder(sort_keys=True, ensure_ascii=False)
BULK_CHUNK_ROWS = 10_000  # rows per executemany in bulk operations (bounds one statement's memory)
IN_CHUNK_MAX = 5_000  # values per SQL IN list
CARD_STATES = ("active", "blocked")


@contextlib.contextmanager
def write_transaction(connection: Connection) -> Iterator[None]:
    """A transaction on ``connection`` that will write (on SQLite: BEGIN IMMEDIATE)."""
    connection.info[WRITE_TRANSACTION] = True
    try:
        with connection.begin():
            yield
    finally:
        # info belongs to the pooled DB-API connection: its next user may only read.
        connection.info.pop(WRITE_TRANSACTION, None)


def canonical_transfer(transfer: Transfer, business_date: str, created_at: str) -> str:
    """The exact text a journal entry hashes: every field of the transfer, in a fixed order."""
    return "|".join(
        [
            transfer.id,
            str(transfer.debit_account_id),
            str(transfer.credit_account_id),
            str(transfer.amount),
            str(transfer.ledger),
            str(int(transfer.code)),
            str(int(transfer.flags)),
            transfer.pending_id or "",
            transfer.user_data,
            business_date,
            created_at,
        ]
    )


def journal_hash(previous: str, canonical: str) -> str:
    """SHA-256 (hex) of the previous entry's hash and this entry's canonical form."""
    return hashlib.sha256(f"{previous}\n{canonical}".encode()).hexdigest()


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
class MemberRecord:
    """A member as stored."""

    id: str
    name: str


@dataclass(frozen=True)
class NewCard:
    """A card to store: the PAN only encrypted, hashed and masked; the PIN only as a PVV."""

    member_id: str
    pan_hash: str
    pan_encrypted: bytes
    pan_masked: str
    expiry: str  # YYMM
    service_code: str
    pvki: int
    pvv: str
    state: str
    daily_amount_max: int
    daily_count_max: int
    payment_amount_max: int
    pin_tries_max: int


@dataclass(frozen=True)
class DisbursementBatch:
    """A validated disbursement: (member id, amount) rows, members unique, amounts positive."""

    batch_id: str
    program_code: str
    purse_code: str
    file_sha256: str
    rows: Sequence[tuple[str, int]]


@dataclass(frozen=True)
class DisbursementRecord:
    """A disbursement batch as applied."""

    batch_id: str
    program_code: str
    purse_code: str
    file_sha256: str
    rows: int
    amount_total: int
    purses_created: int
    created_at: str


@dataclass(frozen=True)
class PurseExpiry:
    """What one expired purse gave back to its program."""

    member_id: str
    purse_code: str
    amount: int
    transfer_id: str


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
            # A writer takes the write lock at BEGIN: a deferred transaction that reads first
            # cannot wait for another writer later (SQLite answers "database is locked" at once).
            # Straight on the driver's connection: through exec_driver_sql, SQLAlchemy's
            # execution machinery made BEGIN cost 31 µs per batch in the commit thread (16 now;
            # docs/benchmarks.md, run 5).
            immediate = connection.info.get(WRITE_TRANSACTION)
            driver = connection.connection.driver_connection
            assert driver is not None
            driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

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


def event_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of an event: ``event_id`` (a new one if absent) and ``schema`` added."""
    event_id = str(payload.get("event_id") or uuid.uuid4().hex)
    return {"event_id": event_id, "schema": EVENT_SCHEMA_VERSION, **payload}


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
        with self.begin_write() as connection:
            schema.metadata.create_all(connection, tables=[schema.schema_migrations])
        for version, name, step in schema.MIGRATIONS:
            with self.begin_write() as connection:
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

    @contextlib.contextmanager
    def begin_write(self) -> Iterator[Connection]:
        """A connection in a write transaction (BEGIN IMMEDIATE on SQLite), committed at the end
        of the ``with`` block, rolled back on an exception."""
        with self.engine.connect() as connection, write_transaction(connection):
            yield connection

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction; the journal is sealed (hash-chained) just before commit."""
        with self.engine.connect() as connection, write_transaction(connection):
            connection.info[NEW_TRANSFERS] = []
            yield connection
            self.seal_journal(connection)

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
        pending = state = None
        if transfer.pending_id is not None and existing is None:
            pending_row = connection.execute(
                select(schema.transfers).where(schema.transfers.c.id == transfer.pending_id)
            ).one_or_none()
            pending = None if pending_row is None else _transfer(pending_row)
            state = self._pending_state(connection, transfer.pending_id, now)
        found = self._accounts(
            connection, [transfer.debit_account_id, transfer.credit_account_id], lock=True
        )
        status = check_transfer(
            transfer,
            found.get(transfer.debit_account_id),
            found.get(transfer.credit_account_id),
            existing,
            pending,
            state,
        )
        if status is not TransferStatus.CREATED:
            return status
        # After this point the transfer must succeed: the guards below only catch races.
        self._apply(connection, transfer, pending)
        connection.execute(
            schema.transfers.insert().values(
                **_transfer_values(transfer, business_date, now), transaction_id=transaction_id
            )
        )
        self._track_pending(connection, transfer, pending, now)
        connection.info.setdefault(NEW_TRANSFERS, []).append((transfer, business_date, now))
        return status

    def _apply(self, connection: Connection, transfer: Transfer, pending: Transfer | None) -> None:
        a = schema.accounts.c
        flags = transfer.flags
        if flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING):
            assert pending is not None
            posted = posted_amount(transfer, pending)
            changes_debit = {
                a.debits_pending: a.debits_pending - pending.amount,
                a.debits_posted: a.debits_posted + posted,
            }
            changes_credit = {
                a.credits_pending: a.credits_pending - pending.amount,
                a.credits_posted: a.credits_posted + posted,
            }
            guard = a.id == transfer.debit_account_id
        else:
            column_debit = a.debits_pending if flags & TransferFlags.PENDING else a.debits_posted
            column_credit = a.credits_pending if flags & TransferFlags.PENDING else a.credits_posted
            changes_debit = {column_debit: column_debit + transfer.amount}
            changes_credit = {column_credit: column_credit + transfer.amount}
            guard = (a.id == transfer.debit_account_id) & (
                (a.flags.op("&")(int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)) == 0)
                | (a.debits_posted + a.debits_pending + transfer.amount <= a.credits_posted)
            )
        result = connection.execute(update(schema.accounts).where(guard).values(changes_debit))
        if result.rowcount != 1:
            raise TransferRejected(TransferStatus.EXCEEDS_CREDITS, transfer)
        connection.execute(
            update(schema.accounts).where(a.id == transfer.credit_account_id).values(changes_credit)
        )

    def _track_pending(
        self, connection: Connection, transfer: Transfer, pending: Transfer | None, now: str
    ) -> None:
        t = schema.transfer_states.c
        if transfer.flags & TransferFlags.PENDING:
            expires = None
            if transfer.timeout_s:
                expires = (
                    datetime.fromisoformat(now) + timedelta(seconds=transfer.timeout_s)
                ).isoformat()
            connection.execute(
                schema.transfer_states.insert().values(
                    pending_id=transfer.id,
                    state=PendingState.PENDING.value,
                    amount=transfer.amount,
                    expires_at=expires,
                )
            )
        elif pending is not None:
            if transfer.flags & TransferFlags.POST_PENDING:
                state = PendingState.POSTED
            elif transfer.code is TransferCode.EXPIRY:
                state = PendingState.EXPIRED
            else:
                state = PendingState.VOIDED
            connection.execute(
                update(schema.transfer_states)
                .where(t.pending_id == pending.id)
                .values(state=state.value, resolved_by=transfer.id)
            )

    def _pending_state(
        self, connection: Connection, pending_id: str, now: str
    ) -> PendingState | None:
        row = connection.execute(
            select(schema.transfer_states.c.state, schema.transfer_states.c.expires_at).where(
                schema.transfer_states.c.pending_id == pending_id
            )
        ).one_or_none()
        if row is None:
            return None
        return effective_pending_state(PendingState(row.state), row.expires_at, now)

    def create_transfers(
        self,
        connection: Connection,
        transfers: Sequence[Transfer],
        *,
        business_date: str,
        now: str,
    ) -> list[TransferStatus]:
        """Create transfers in order; a linked chain succeeds or fails as a whole.

        A chain is a run of transfers flagged LINKED ended by one without the flag. When one
        fails, it keeps its own status, the others of the chain get LINKED_EVENT_FAILED and none
        of the chain is applied. A chain left open at the end fails with
        LINKED_EVENT_CHAIN_OPEN.
        """
        results: list[TransferStatus] = []
        chain: list[Transfer] = []
        for transfer in transfers:
            chain.append(transfer)
            if transfer.flags & TransferFlags.LINKED:
                continue
            results.extend(self._create_chain(connection, chain, business_date, now))
            chain = []
        if chain:
            results.extend([TransferStatus.LINKED_EVENT_CHAIN_OPEN] * len(chain))
        return results

    def _create_chain(
        self, connection: Connection, chain: list[Transfer], business_date: str, now: str
    ) -> list[TransferStatus]:
        savepoint = connection.begin_nested()
        new = connection.info.setdefault(NEW_TRANSFERS, [])
        mark = len(new)
        statuses: list[TransferStatus] = []
        for index, transfer in enumerate(chain):
            try:
                status = self.post_transfer(
                    connection, transfer, business_date=business_date, now=now
                )
            except TransferRejected as rejected:
                status = rejected.status
            if status not in (TransferStatus.CREATED, TransferStatus.EXISTS):
                savepoint.rollback()
                del new[mark:]
                failed = [TransferStatus.LINKED_EVENT_FAILED] * len(chain)
                failed[index] = status
                return failed
            statuses.append(status)
        savepoint.commit()
        return statuses

    def expire_pending(self, now: str, *, business_date: str, limit: int = 1000) -> list[str]:
        """Void every pending transfer whose timeout has passed; return their ids."""
        t = schema.transfer_states.c
        with self.transaction() as connection:
            rows = connection.execute(
                select(schema.transfers)
                .join(schema.transfer_states, t.pending_id == schema.transfers.c.id)
                .where(t.state == PendingState.PENDING.value, t.expires_at <= now)
                .order_by(t.expires_at)
                .limit(limit)
            ).all()
            expired: list[str] = []
            touched: set[int] = set()
            for row in rows:
                pending = _transfer(row)
                void = Transfer(
                    id=f"expire:{pending.id}",
                    debit_account_id=pending.debit_account_id,
                    credit_account_id=pending.credit_account_id,
                    amount=0,
                    ledger=pending.ledger,
                    code=TransferCode.EXPIRY,
                    flags=TransferFlags.VOID_PENDING,
                    pending_id=pending.id,
                )
                # The sweep sees the hold as expired; resolve it as the expiry itself.
                connection.execute(
                    update(schema.transfer_states)
                    .where(t.pending_id == pending.id)
                    .values(expires_at=None)
                )
                status = self.post_transfer(
                    connection,
                    void,
                    business_date=business_date,
                    now=now,
                    transaction_id=row.transaction_id,
                )
                assert status is TransferStatus.CREATED, status
                expired.append(pending.id)
                if row.transaction_id is not None:
                    touched.add(row.transaction_id)
            tx = schema.transactions.c
            for transaction_id in sorted(touched):
                connection.execute(
                    update(schema.transactions)
                    .where(tx.id == transaction_id, tx.hold_state == "pending")
                    .values(hold_state="expired")
                )
                record = connection.execute(
                    select(tx.tid, tx.stan, tx.rrn, tx.merchant_id, tx.pan_masked, tx.amount).where(
                        tx.id == transaction_id
                    )
                ).one()
                self.add_event(
                    connection,
                    TOPIC_HOLDS_EXPIRED,
                    {
                        "event_id": f"expire-{transaction_id}",
                        "type": "hold_expired",
                        "time": now,
                        "business_date": business_date,
                        "terminal_id": record.tid,
                        "stan": record.stan,
                        "rrn": record.rrn,
                        "merchant_id": record.merchant_id,
                        "pan_masked": record.pan_masked,
                        "amount": record.amount,
                        "transaction_id": transaction_id,
                    },
                    now=now,
                )
        return expired

    # --- journal hash chain ------------------------------------------------------------------

    def seal_journal(self, connection: Connection) -> None:
        """Append this transaction's new transfers to the hash-chained journal.

        Runs just before commit, holding the chain head's row lock only for that moment, so
        several processes can share one chain.
        """
        new = connection.info.get(NEW_TRANSFERS) or []
        if not new:
            return
        head_query = select(schema.journal_head).where(schema.journal_head.c.id == 1)
        if not self.is_sqlite:
            head_query = head_query.with_for_update()
        head = connection.execute(head_query).one()
        seq, previous = head.seq, head.hash
        rows = []
        for transfer, business_date, now in new:
            seq += 1
            digest = journal_hash(previous, canonical_transfer(transfer, business_date, now))
            rows.append(
                {"seq": seq, "transfer_id": transfer.id, "prev_hash": previous, "hash": digest}
            )
            previous = digest
        connection.execute(schema.journal.insert(), rows)
        connection.execute(
            update(schema.journal_head)
            .where(schema.journal_head.c.id == 1)
            .values(seq=seq, hash=previous)
        )
        new.clear()

    def verify_journal(self) -> tuple[int, str] | None:
        """Recompute the chain; return (seq, reason) of the first break, or None when whole."""
        j, t = schema.journal.c, schema.transfers.c
        previous = schema.GENESIS_HASH
        expected_seq = 0
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(schema.journal, schema.transfers)
                .select_from(schema.journal.outerjoin(schema.transfers, t.id == j.transfer_id))
                .order_by(j.seq)
            )
            for row in rows:
                expected_seq += 1
                if row.seq != expected_seq:
                    return expected_seq, "journal entry missing"
                if row.prev_hash != previous:
                    return row.seq, "previous hash does not match"
                if row.amount is None:
                    return row.seq, f"transfer {row.transfer_id} missing"
                transfer = _transfer(row)
                digest = journal_hash(
                    previous, canonical_transfer(transfer, row.business_date, row.created_at)
                )
                if digest != row.hash:
                    return row.seq, f"transfer {row.transfer_id} altered"
                previous = digest
            head = connection.execute(select(schema.journal_head)).one()
            count = int(connection.scalar(select(func.count()).select_from(schema.transfers)) or 0)
        if head.seq != expected_seq or head.hash != previous:
            return expected_seq, "journal head does not match the last entry"
        if count != expected_seq:
            return expected_seq, f"{count - expected_seq} transfers are not in the journal"
        return None

    def journal_head(self) -> tuple[int, str]:
        """The chain head: number of entries and the last hash."""
        with self.engine.connect() as connection:
            head = connection.execute(select(schema.journal_head)).one()
        return int(head.seq), str(head.hash)

    # --- outbox ------------------------------------------------------------------------------

    def add_event(
        self, connection: Connection, topic: str, payload: Mapping[str, Any], *, now: str
    ) -> str:
        """Write an event to the outbox in the caller's transaction; return its event id."""
        body = event_body(payload)
        connection.execute(
            schema.outbox.insert().values(
                event_id=body["event_id"],
                topic=topic,
                payload=EVENT_JSON(body),
                created_at=now,
            )
        )
        return str(body["event_id"])

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
            # What each transfer moved to the posted totals (ledger.model.posted_amount): a
            # hold nothing, a void nothing, a post of 0 its whole pending amount.
            pending = schema.transfers.alias("pending")
            posted = case(
                (t.flags.op("&")(int(TransferFlags.PENDING)) != 0, 0),
                (t.flags.op("&")(int(TransferFlags.VOID_PENDING)) != 0, 0),
                (
                    (t.flags.op("&")(int(TransferFlags.POST_PENDING)) != 0) & (t.amount == 0),
                    func.coalesce(pending.c.amount, 0),
                ),
                else_=t.amount,
            )
            journal = connection.scalar(
                select(func.coalesce(func.sum(posted), 0)).select_from(
                    schema.transfers.outerjoin(pending, pending.c.id == t.pending_id)
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
            card_id=row.card_id,
        )

    def _purses(self, connection: Connection, member_id: str, *, lock: bool) -> tuple[Purse, ...]:
        p, k = schema.purses.c, schema.purse_kinds.c
        purse_rows = connection.execute(
            select(
                p.code, p.account_id, p.program_code, p.expires, k.chains, k.merchant_ids, k.mccs
            )
            .select_from(schema.purses.outerjoin(schema.purse_kinds, k.code == p.code))
            .where(p.member_id == member_id)
            .order_by(p.code)
        ).all()
        found = self._accounts(connection, [r.account_id for r in purse_rows], lock=lock)
        return tuple(
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

    def discount_rules(self) -> list[dict[str, Any]]:
        """All discount rules as stored (column name -> value)."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(schema.discount_rules)).mappings().all()
        return [dict(row) for row in rows]

    def program_accounts(self) -> dict[str, int]:
        """Program code -> its funding account id."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(schema.programs.c.code, schema.programs.c.account_id)
            ).all()
        return {row.code: row.account_id for row in rows}

    def set_terminal_keys(
        self, tid: str, *, tpk: str, tak: str, event: Mapping[str, Any] | None = None,
        now: str = "",
    ) -> None:
        """Store new working keys (under the LMK) for a terminal, and the ``keys/exchange``
        event in the same transaction when one is given."""
        with self.begin_write() as connection:
            connection.execute(
                update(schema.terminals)
                .where(schema.terminals.c.id == tid)
                .values(tpk=tpk, tak=tak)
            )
            if event is not None:
                self.add_event(connection, TOPIC_KEYS_EXCHANGE, event, now=now)

    # --- administration: members, cards, settings ---------------------------------------------

    def set_setting(self, key: str, value: str) -> None:
        """Store (or replace) a setting."""
        with self.begin_write() as connection:
            connection.execute(delete(schema.settings).where(schema.settings.c.key == key))
            connection.execute(schema.settings.insert().values(key=key, value=value))

    def add_member(self, member_id: str, name: str) -> None:
        """Create a member; LedgerError when the id is taken."""
        try:
            with self.begin_write() as connection:
                connection.execute(schema.members.insert().values(id=member_id, name=name))
        except IntegrityError:
            raise LedgerError(f"member {member_id!r} exists already") from None

    def member(self, member_id: str) -> MemberRecord | None:
        """One member, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(schema.members).where(schema.members.c.id == member_id)
            ).one_or_none()
        return None if row is None else MemberRecord(row.id, row.name)

    def members(self, *, limit: int, offset: int = 0) -> list[MemberRecord]:
        """Members in id order, ``limit`` of them from ``offset``."""
        assert limit > 0
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(schema.members).order_by(schema.members.c.id).limit(limit).offset(offset)
            ).all()
        return [MemberRecord(row.id, row.name) for row in rows]

    def member_count(self) -> int:
        """How many members there are."""
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(schema.members)) or 0)

    def member_ids(self, candidates: Iterable[str] | None = None) -> set[str]:
        """The ids of all members (or of those among ``candidates`` that exist)."""
        m = schema.members.c
        with self.engine.connect() as connection:
            if candidates is None:
                return set(connection.scalars(select(m.id)))
            found: set[str] = set()
            wanted = sorted(set(candidates))
            for start in range(0, len(wanted), IN_CHUNK_MAX):
                chunk = wanted[start : start + IN_CHUNK_MAX]
                found.update(connection.scalars(select(m.id).where(m.id.in_(chunk))))
            return found

    def member_cards(self, member_id: str) -> list[CardRecord]:
        """The member's cards, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(schema.cards)
                .where(schema.cards.c.member_id == member_id)
                .order_by(schema.cards.c.id)
            ).all()
        return [_card(row) for row in rows]

    def member_purses(self, member_id: str) -> tuple[Purse, ...]:
        """The member's purses with their accounts."""
        with self.engine.connect() as connection:
            return self._purses(connection, member_id, lock=False)

    def insert_card(self, card: NewCard) -> int:
        """Store a new card; return its id. LedgerError when the PAN exists already."""
        try:
            with self.begin_write() as connection:
                if (
                    connection.execute(
                        select(schema.members.c.id).where(schema.members.c.id == card.member_id)
                    ).first()
                    is None
                ):
                    raise LedgerError(f"member {card.member_id!r} not found")
                result = connection.execute(schema.cards.insert().values(**_card_values(card)))
        except IntegrityError:
            raise LedgerError(f"a card with PAN {card.pan_masked} exists already") from None
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])

    def update_card(
        self,
        card_id: int,
        *,
        state: str | None = None,
        pvv: str | None = None,
        pin_failures: int | None = None,
    ) -> None:
        """Change a card's state, PVV or PIN failure counter."""
        changes: dict[str, Any] = {}
        if state is not None:
            assert state in CARD_STATES, state
            changes["state"] = state
        if pvv is not None:
            assert len(pvv) == 4 and pvv.isdigit(), "a PVV is 4 digits"
            changes["pvv"] = pvv
        if pin_failures is not None:
            assert pin_failures >= 0
            changes["pin_failures"] = pin_failures
        assert changes, "nothing to change"
        with self.begin_write() as connection:
            result = connection.execute(
                update(schema.cards).where(schema.cards.c.id == card_id).values(**changes)
            )
        if result.rowcount != 1:
            raise LedgerError(f"card {card_id} not found")

    def add_members_with_cards(
        self,
        members: Sequence[tuple[str, str]],
        cards: Sequence[NewCard],
        *,
        disbursement: DisbursementBatch | None = None,
        business_date: str = "",
        now: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Bulk insert of members, their cards and (optionally) a disbursement to them.

        One transaction: all of it or none of it.
        """
        try:
            with self.transaction() as connection:
                for start in range(0, len(members), BULK_CHUNK_ROWS):
                    chunk = members[start : start + BULK_CHUNK_ROWS]
                    connection.execute(
                        schema.members.insert(), [{"id": i, "name": n} for i, n in chunk]
                    )
                for start in range(0, len(cards), BULK_CHUNK_ROWS):
                    rows = [_card_values(c) for c in cards[start : start + BULK_CHUNK_ROWS]]
                    connection.execute(schema.cards.insert(), rows)
                if disbursement is not None:
                    record = self._claim_batch(connection, disbursement, now)
                    if record is not None:
                        raise LedgerError(f"batch {disbursement.batch_id!r} exists already")
                    self._disburse(connection, disbursement, business_date, now, progress)
        except IntegrityError as error:
            raise LedgerError(f"members or cards exist already: {error.orig}") from None

    # --- programs: disbursement and purse expiry -------------------------------------------------

    def program_purse_code(self, program_code: str) -> str | None:
        """The purse kind a program's existing purses have (None if it funds none or several)."""
        p = schema.purses.c
        with self.engine.connect() as connection:
            codes = connection.scalars(
                select(p.code).where(p.program_code == program_code).distinct().limit(2)
            ).all()
        return codes[0] if len(codes) == 1 else None

    def disbursement_batch(self, batch_id: str) -> DisbursementRecord | None:
        """A disbursement batch already applied, or None."""
        with self.engine.connect() as connection:
            return _batch_record(connection, batch_id)

    def apply_disbursement(
        self,
        batch: DisbursementBatch,
        *,
        business_date: str,
        now: str,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[DisbursementRecord, bool]:
        """Apply a validated batch in one transaction; return (its record, applied now?).

        Idempotent by batch id: a batch applied before is not applied again (False is returned);
        the same id with another file, program or purse raises LedgerError. Every row becomes one
        DISBURSEMENT transfer from the program's account to the member's purse (created when
        missing); balances are updated once per account and the journal sealed once.
        ``progress`` is called with the number of rows written so far.
        """
        assert batch.rows, "an empty batch is refused by validation"
        try:
            with self.transaction() as connection:
                record = self._claim_batch(connection, batch, now)
                if record is not None:
                    return record, False
                record = self._disburse(connection, batch, business_date, now, progress)
        except IntegrityError as error:
            # Another process applied the same batch id at the same moment; nothing of ours stays.
            log.info("disbursement batch raced", extra={"batch": batch.batch_id})
            record = self.disbursement_batch(batch.batch_id)
            if record is None:
                raise LedgerError(f"disbursement failed, nothing applied: {error.orig}") from None
            _check_same_batch(record, batch)
            return record, False
        assert record is not None
        return record, True

    def _disburse(
        self,
        connection: Connection,
        batch: DisbursementBatch,
        business_date: str,
        now: str,
        progress: Callable[[int], None] | None,
    ) -> DisbursementRecord:
        report = progress or (lambda _done: None)
        created = self._write_disbursement(connection, batch, business_date, now, report)
        connection.execute(
            update(schema.disbursement_batches)
            .where(schema.disbursement_batches.c.batch_id == batch.batch_id)
            .values(purses_created=created)
        )
        record = _batch_record(connection, batch.batch_id)
        assert record is not None
        self.add_event(
            connection,
            TOPIC_DISBURSEMENTS_BATCH,
            {
                "event_id": f"disbursement-{batch.batch_id}",
                "type": "disbursement",
                "time": now,
                "business_date": business_date,
                "batch_id": batch.batch_id,
                "program": batch.program_code,
                "purse": batch.purse_code,
                "rows": record.rows,
                "amount_total": record.amount_total,
                "purses_created": created,
            },
            now=now,
        )
        return record

    def _claim_batch(
        self, connection: Connection, batch: DisbursementBatch, now: str
    ) -> DisbursementRecord | None:
        existing = _batch_record(connection, batch.batch_id)
        if existing is not None:
            _check_same_batch(existing, batch)
            return existing
        connection.execute(
            schema.disbursement_batches.insert().values(
                batch_id=batch.batch_id,
                program_code=batch.program_code,
                purse_code=batch.purse_code,
                file_sha256=batch.file_sha256,
                rows=len(batch.rows),
                amount_total=sum(amount for _member, amount in batch.rows),
                purses_created=0,
                created_at=now,
            )
        )
        return None

    def _write_disbursement(
        self,
        connection: Connection,
        batch: DisbursementBatch,
        business_date: str,
        now: str,
        report: Callable[[int], None],
    ) -> int:
        program_query = select(schema.programs.c.account_id).where(
            schema.programs.c.code == batch.program_code
        )
        program_account = connection.scalar(program_query)
        if program_account is None:
            raise LedgerError(f"program {batch.program_code!r} not found")
        kind = connection.execute(
            select(schema.purse_kinds.c.expires).where(
                schema.purse_kinds.c.code == batch.purse_code
            )
        ).one_or_none()
        if kind is None:
            raise LedgerError(f"purse kind {batch.purse_code!r} not found")
        purse_accounts, created = self._ensure_purses(
            connection, [m for m, _a in batch.rows], batch, kind.expires
        )
        # Lock the program account first, then the purses in id order (as the switch does).
        self._accounts(connection, [program_account], lock=True)
        a = schema.accounts.c
        transfers: list[Transfer] = []
        credit_rows: list[dict[str, int]] = []
        for member_id, amount in batch.rows:
            account_id = purse_accounts[member_id]
            transfers.append(
                Transfer(
                    id=f"disburse:{batch.batch_id}:{member_id}",
                    debit_account_id=program_account,
                    credit_account_id=account_id,
                    amount=amount,
                    ledger=364,
                    code=TransferCode.DISBURSEMENT,
                    user_data=f"batch {batch.batch_id}",
                )
            )
            credit_rows.append({"b_id": account_id, "b_amount": amount})
        credit_rows.sort(key=lambda row: row["b_id"])
        credit = (
            update(schema.accounts)
            .where(a.id == bindparam("b_id"))
            .values(credits_posted=a.credits_posted + bindparam("b_amount"))
        )
        for start in range(0, len(credit_rows), BULK_CHUNK_ROWS):
            connection.execute(credit, credit_rows[start : start + BULK_CHUNK_ROWS])
        total = sum(t.amount for t in transfers)
        connection.execute(
            update(schema.accounts)
            .where(a.id == program_account)
            .values(debits_posted=a.debits_posted + total)
        )
        new = connection.info.setdefault(NEW_TRANSFERS, [])
        for start in range(0, len(transfers), BULK_CHUNK_ROWS):
            chunk = transfers[start : start + BULK_CHUNK_ROWS]
            connection.execute(
                schema.transfers.insert(),
                [_transfer_values(t, business_date, now) for t in chunk],
            )
            new.extend((t, business_date, now) for t in chunk)
            report(start + len(chunk))
        return created

    def _ensure_purses(
        self,
        connection: Connection,
        member_ids: Sequence[str],
        batch: DisbursementBatch,
        expires: str | None,
    ) -> tuple[dict[str, int], int]:
        """Purse account ids of the members, creating the purses they lack; and how many."""
        p = schema.purses.c
        wanted = set(member_ids)
        found: dict[str, int] = {}
        for row in connection.execute(
            select(p.member_id, p.account_id, p.program_code).where(p.code == batch.purse_code)
        ):
            if row.member_id in wanted:
                if row.program_code != batch.program_code:
                    raise LedgerError(
                        f"member {row.member_id}: purse {batch.purse_code} is funded by "
                        f"{row.program_code}, not {batch.program_code}"
                    )
                found[row.member_id] = row.account_id
        missing = sorted(wanted - found.keys())
        if not missing:
            return found, 0
        codes = {f"purse:{m}:{batch.purse_code}": m for m in missing}  # as ledger.demo names them
        before = int(
            connection.scalar(select(func.coalesce(func.max(schema.accounts.c.id), 0))) or 0
        )
        account_rows = [
            {
                "code": code,
                "ledger": 364,
                "flags": int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                "debits_pending": 0,
                "debits_posted": 0,
                "credits_pending": 0,
                "credits_posted": 0,
            }
            for code in codes
        ]
        for start in range(0, len(account_rows), BULK_CHUNK_ROWS):
            connection.execute(
                schema.accounts.insert(), account_rows[start : start + BULK_CHUNK_ROWS]
            )
        a = schema.accounts.c
        # Sequences only grow, so our new rows are those above the largest id seen before.
        for new_id, new_code in connection.execute(select(a.id, a.code).where(a.id > before)):
            member_id = codes.get(new_code)
            if member_id is not None:
                found[member_id] = int(new_id)
        assert all(m in found for m in missing), "every new purse account was read back"
        purse_rows = [
            {
                "member_id": m,
                "code": batch.purse_code,
                "account_id": found[m],
                "program_code": batch.program_code,
                "expires": expires,
            }
            for m in missing
        ]
        for start in range(0, len(purse_rows), BULK_CHUNK_ROWS):
            connection.execute(schema.purses.insert(), purse_rows[start : start + BULK_CHUNK_ROWS])
        return found, len(missing)

    def expire_purses(self, as_of: str, *, business_date: str, now: str) -> list[PurseExpiry]:
        """Return what expired purses hold to their programs with EXPIRY transfers.

        A purse whose ``expires`` date lies before ``as_of`` (YYYY-MM-DD) gives back its available
        balance (posted credits less posted and pending debits: holds stay until resolved). One
        transaction; running it again moves nothing more, because the purses are then empty.
        """
        p, pr = schema.purses.c, schema.programs.c
        expired: list[PurseExpiry] = []
        with self.transaction() as connection:
            rows = connection.execute(
                select(p.member_id, p.code, p.account_id, pr.account_id.label("program_account"))
                .select_from(schema.purses.join(schema.programs, pr.code == p.program_code))
                .where(p.expires.is_not(None), p.expires < as_of)
                .order_by(p.account_id)
            ).all()
            found = self._accounts(connection, [r.account_id for r in rows], lock=True)
            for row in rows:
                account = found[row.account_id]
                amount = account.available_credit
                if amount <= 0:
                    continue
                transfer = Transfer(
                    id=f"expiry:{account.code}:{account.debits_posted}",
                    debit_account_id=row.account_id,
                    credit_account_id=row.program_account,
                    amount=amount,
                    ledger=364,
                    code=TransferCode.EXPIRY,
                    user_data=f"purse expired before {as_of}",
                )
                status = self.post_transfer(
                    connection, transfer, business_date=business_date, now=now
                )
                if status is not TransferStatus.CREATED:
                    raise TransferRejected(status, transfer)
                expired.append(PurseExpiry(row.member_id, row.code, amount, transfer.id))
        return expired

    # --- authorization --------------------------------------------------------------------------

    # --- reads a decision makes (through _View) -----------------------------------------------

    def transaction_record(
        self, connection: Connection, *conditions: Any, lock: bool = False
    ) -> TransactionRecord | None:
        """The first stored request matching ``conditions`` (newest first)."""
        query = (
            select(schema.transactions)
            .where(*conditions)
            .order_by(schema.transactions.c.id.desc())
            .limit(1)
        )
        if lock and not self.is_sqlite:
            query = query.with_for_update()
        row = connection.execute(query).one_or_none()
        if row is None:
            return None
        transfer_ids = tuple(
            connection.scalars(
                select(schema.transfers.c.id)
                .where(schema.transfers.c.transaction_id == row.id)
                .order_by(schema.transfers.c.seq)
            )
        )
        return transaction_record_of(dict(row._mapping), transfer_ids)


class _View:
    """The SQL reads the engine's working set does not hold (originals by key, RRN or id, their
    postings and children, terminal totals), on the batch's own connection."""

    def __init__(self, store: Store, connection: Connection, job: AuthorizationJob) -> None:
        self._store = store
        self._connection = connection
        self._job = job

    def transaction_by_key(self, key: TransactionKey) -> TransactionRecord | None:
        t = schema.transactions.c
        return self._store.transaction_record(
            self._connection,
            t.tid == key.tid,
            t.stan == key.stan,
            t.transmission == key.transmission,
            lock=True,
        )

    def transaction_by_rrn(self, merchant_id: str, rrn: str) -> TransactionRecord | None:
        t = schema.transactions.c
        return self._store.transaction_record(
            self._connection,
            t.merchant_id == merchant_id,
            t.rrn == rrn,
            t.response_code == "00",
            t.kind.in_(("purchase", "completion")),
            lock=True,
        )

    def transaction_by_id(self, transaction_id: int) -> TransactionRecord | None:
        return self._store.transaction_record(
            self._connection, schema.transactions.c.id == transaction_id, lock=True
        )

    def terminal_totals(self, tid: str, business_date: str) -> TerminalTotals:
        t = schema.transactions.c
        base = (t.tid == tid, t.business_date == business_date, t.response_code == "00")
        debits = self._connection.execute(
            select(func.count(), func.coalesce(func.sum(t.amount - t.reversed_amount), 0)).where(
                *base, t.kind.in_(("purchase", "completion")), t.reversed_amount < t.amount
            )
        ).one()
        credits = self._connection.execute(
            select(func.count(), func.coalesce(func.sum(t.amount - t.reversed_amount), 0)).where(
                *base, t.kind == "refund", t.reversed_amount < t.amount
            )
        ).one()
        return TerminalTotals(int(debits[0]), int(debits[1]), int(credits[0]), int(credits[1]))

    def children(self, original_id: int) -> tuple[TransactionRecord, ...]:
        t = schema.transactions.c
        ids = self._connection.scalars(
            select(t.id).where(t.original_id == original_id, t.response_code == "00").order_by(t.id)
        ).all()
        found = (self.transaction_by_id(i) for i in ids)
        return tuple(r for r in found if r is not None)

    def postings_of(self, transaction_id: int) -> tuple[Posting, ...]:
        rows = self._connection.execute(
            select(schema.transfers)
            .where(schema.transfers.c.transaction_id == transaction_id)
            .order_by(schema.transfers.c.seq)
        ).all()
        return tuple(
            Posting(
                debit_account_id=r.debit_account_id,
                credit_account_id=r.credit_account_id,
                amount=r.amount,
                code=TransferCode(r.code),
                flags=TransferFlags(r.flags),
                pending_id=r.pending_id,
                timeout_s=r.timeout_s,
                id=r.id,
                user_data=r.user_data,
            )
            for r in rows
        )


def replayed_result(stored: StoredTransaction, request_digest: str) -> JobResult:
    """The answer to a request whose key was seen before: the original, or a conflict (94)."""
    if stored.request_digest != request_digest:
        return JobResult("94", {}, replayed=True, conflict=True)
    return JobResult(stored.response_code, stored.response_fields, replayed=True)


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
        timeout_s=row.timeout_s,
    )


_RECORD_FIELDS = tuple(
    name for name in TransactionRecord.__dataclass_fields__ if name != "transfer_ids"
)


def transaction_record_of(
    row: Mapping[str, Any], transfer_ids: tuple[str, ...] = ()
) -> TransactionRecord:
    """A :class:`TransactionRecord` from a transactions row (column name -> value)."""
    values = {name: row[name] for name in _RECORD_FIELDS}
    values["tombstone"] = bool(values["tombstone"])
    return TransactionRecord(**values, transfer_ids=transfer_ids)


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


def _transfer_values(transfer: Transfer, business_date: str, now: str) -> dict[str, Any]:
    return {
        "id": transfer.id,
        "debit_account_id": transfer.debit_account_id,
        "credit_account_id": transfer.credit_account_id,
        "amount": transfer.amount,
        "ledger": transfer.ledger,
        "code": int(transfer.code),
        "flags": int(transfer.flags),
        "pending_id": transfer.pending_id,
        "user_data": transfer.user_data,
        "timeout_s": transfer.timeout_s,
        "business_date": business_date,
        "created_at": now,
    }


def _card_values(card: NewCard) -> dict[str, Any]:
    assert card.state in CARD_STATES, card.state
    return {
        "member_id": card.member_id,
        "pan_hash": card.pan_hash,
        "pan_encrypted": card.pan_encrypted,
        "pan_masked": card.pan_masked,
        "expiry": card.expiry,
        "service_code": card.service_code,
        "pvki": card.pvki,
        "pvv": card.pvv,
        "state": card.state,
        "pin_failures": 0,
        "daily_amount_max": card.daily_amount_max,
        "daily_count_max": card.daily_count_max,
        "payment_amount_max": card.payment_amount_max,
        "pin_tries_max": card.pin_tries_max,
    }


def _batch_record(connection: Connection, batch_id: str) -> DisbursementRecord | None:
    row = connection.execute(
        select(schema.disbursement_batches).where(
            schema.disbursement_batches.c.batch_id == batch_id
        )
    ).one_or_none()
    if row is None:
        return None
    return DisbursementRecord(
        batch_id=row.batch_id,
        program_code=row.program_code,
        purse_code=row.purse_code,
        file_sha256=row.file_sha256,
        rows=row.rows,
        amount_total=row.amount_total,
        purses_created=row.purses_created,
        created_at=row.created_at,
    )


def _check_same_batch(record: DisbursementRecord, batch: DisbursementBatch) -> None:
    theirs = (record.program_code, record.purse_code, record.file_sha256)
    ours = (batch.program_code, batch.purse_code, batch.file_sha256)
    if theirs != ours:
        raise LedgerError(
            f"batch {batch.batch_id!r} was applied on {record.created_at} with another "
            f"file, program or purse ({record.program_code}/{record.purse_code}, sha256 "
            f"{record.file_sha256[:12]}…); nothing applied now"
        )
