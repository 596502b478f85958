"""The authorization engine: group commit with the batch's working set in memory.

Theory of operation. One thread takes every authorization job waiting (up to ``batch_max``)
and runs them in one database transaction:

1. Prefetch, in one statement each, what the batch will read: earlier requests with the same
   keys (retransmissions), tombstones, the cards, their members' purses and accounts, the
   cards' daily totals. On PostgreSQL the cards and accounts are locked (``FOR UPDATE``, in id
   order) so that several switch processes can share the ledger.
2. Run each job's pure ``decide`` against a :class:`ledger.domain.LedgerView` over that
   working set. Its postings are validated with :func:`ledger.model.check_transfer` and
   applied to the in-memory accounts; everything the job changes is collected on the side and
   merged into the batch only when the whole job succeeded, so a failing job leaves no trace
   (the savepoint of the old design, without its cost).
3. Write the batch with one ``executemany`` per table (requests, transfers, hold states,
   accounts, cards, daily totals, tombstones, outbox), seal the journal hash chain, commit.
4. Only then resolve the jobs' futures: nothing is answered before it is durable.

Reads the working set does not hold (an original by RRN, the postings of an original, a
terminal's totals) first write out what the batch has so far, then ask SQL on the same
connection, so they see the batch's own effects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import operator
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ledger import schema
from ledger.domain import (
    AuthorizationJob,
    CardRecord,
    CardSnapshot,
    JobResult,
    Outcome,
    Posting,
    Purse,
    StoredTransaction,
    TerminalTotals,
    TransactionKey,
    TransactionRecord,
)
from ledger.jsonenc import json_encoder
from ledger.model import (
    FLAG_PENDING,
    FLAG_POST_PENDING,
    Account,
    AccountFlags,
    PendingState,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferStatus,
    apply_transfer,
    check_transfer,
    effective_pending_state,
)
from ledger.store import (
    EVENT_JSON,
    EVENT_SCHEMA_VERSION,
    NEW_TRANSFERS,
    RETRYABLE_SQLSTATES,
    TOPIC_TRANSACTIONS_PREFIX,
    LedgerError,
    Store,
    TransferRejected,
    _View,
    canonical_transfer,
    journal_hash,
    replayed_result,
    transaction_record_of,
    transfer_digest,
    write_transaction,
)

log = logging.getLogger("honar.ledger")

BATCH_RETRIES_MAX = 5
CACHE_ENTRIES_MAX = 200_000  # cards, accounts and daily totals kept between batches (SQLite)
UNIQUE_VIOLATION = "23505"
PAYMENT_KINDS = ("purchase", "completion")

_TX_COLUMNS = (
    "id",
    "tid",
    "stan",
    "transmission",
    "mti",
    "kind",
    "processing_code",
    "request_digest",
    "card_id",
    "member_id",
    "merchant_id",
    "pan_masked",
    "amount",
    "response_code",
    "rrn",
    "auth_id",
    "response_json",
    "business_date",
    "created_at",
    "discount",
    "discount_rule",
    "discount_funded_by",
    "amount_charged",
    "purses_used",
    "original_id",
    "reversed_amount",
    "refunded_amount",
    "hold_state",
    "hold_expires_at",
    "tombstone",
)
_TX_DEFAULTS: dict[str, Any] = {
    "processing_code": "",
    "discount": 0,
    "discount_rule": "",
    "discount_funded_by": "",
    "amount_charged": 0,
    "purses_used": "",
    "original_id": None,
    "reversed_amount": 0,
    "refunded_amount": 0,
    "hold_state": "",
    "hold_expires_at": None,
    "tombstone": False,
}
_ACCOUNT_COLUMNS = (
    "id, code, ledger, flags, debits_pending, debits_posted, credits_pending, credits_posted"
)
# A transactions row (a dict) as the tuple the INSERT below takes, in one C call per row.
_TX_VALUES = operator.itemgetter(*_TX_COLUMNS)

# The batch's statements, built once (``?`` placeholders; see _Batch.sql for PostgreSQL).
_INSERT_TRANSACTIONS = (
    f"INSERT INTO transactions ({', '.join(_TX_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_TX_COLUMNS))})"
)
_INSERT_TRANSFERS = (
    "INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, "
    "flags, pending_id, user_data, timeout_s, transaction_id, business_date, created_at) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_STATES = (
    "INSERT INTO transfer_states (pending_id, state, amount, expires_at, resolved_by) "
    "VALUES (?,?,?,?,?)"
)
_UPDATE_STATES = "UPDATE transfer_states SET state = ?, resolved_by = ? WHERE pending_id = ?"
_UPDATE_ACCOUNTS = (
    "UPDATE accounts SET debits_pending = ?, debits_posted = ?, credits_pending = ?, "
    "credits_posted = ? WHERE id = ?"
)
_UPDATE_CARDS = "UPDATE cards SET pin_failures = ? WHERE id = ?"
_UPSERT_CARD_DAYS = (
    "INSERT INTO card_days (card_id, business_date, amount, count) VALUES (?,?,?,?) "
    "ON CONFLICT (card_id, business_date) DO UPDATE "
    "SET amount = excluded.amount, count = excluded.count"
)
_INSERT_TOMBSTONES = (
    "INSERT INTO tombstones (tid, stan, transmission, reversal_id) VALUES (?,?,?,?)"
)
_INSERT_OUTBOX = "INSERT INTO outbox (event_id, topic, payload, created_at) VALUES (?,?,?,?)"
_INSERT_JOURNAL = "INSERT INTO journal (seq, transfer_id, prev_hash, hash) VALUES (?,?,?,?)"

# A discount rule use: an approved purchase or completion not wholly reversed. _COUNT_RULE_USES
# is the test in SQL (rows already stored), _is_rule_use the same test in Python (the batch's).
_RULE_USE_KINDS = ("purchase", "completion")
_COUNT_RULE_USES = (
    "SELECT COUNT(*) FROM transactions WHERE member_id = ? AND discount_rule = ? "
    "AND business_date >= ? AND response_code = '00' "
    f"AND kind IN ({', '.join(repr(kind) for kind in _RULE_USE_KINDS)}) "
    "AND reversed_amount < amount"
)


def _is_rule_use(kind: str, response_code: str, amount: int, reversed_amount: int) -> bool:
    return kind in _RULE_USE_KINDS and response_code == "00" and reversed_amount < amount


def _record_is_rule_use(record: TransactionRecord) -> int:
    return int(
        _is_rule_use(record.kind, record.response_code, record.amount, record.reversed_amount)
    )


# The stored response's encoding, as ``json.dumps`` writes it, with the encoder built once
# (ledger.jsonenc; the outbox payload's is ledger.store.EVENT_JSON).
_RESPONSE_JSON = json_encoder()


def decision_event(
    job: AuthorizationJob, outcome: Outcome, rrn: str, auth_id: str, transaction_id: int
) -> dict[str, Any]:
    """The outbox event of one decision (no card data but the masked PAN)."""
    payload: dict[str, Any] = {
        "event_id": hashlib.sha256(
            f"{job.key.tid}|{job.key.stan}|{job.key.transmission}".encode()
        ).hexdigest()[:32],
        "schema": EVENT_SCHEMA_VERSION,
        "type": job.kind,
        "time": job.now,
        "business_date": job.business_date,
        "mti": job.mti,
        "processing_code": job.processing_code,
        "terminal_id": job.key.tid,
        "stan": job.key.stan,
        "merchant_id": job.merchant_id,
        "pan_masked": job.pan_masked,
        "amount": outcome.amount,
        "response_code": outcome.response_code,
        "approved": outcome.response_code == "00",
        "rrn": rrn,
        "auth_id": auth_id,
        "transaction_id": transaction_id,
    }
    payload.update(outcome.event or {})
    return payload


def authorization_id(transaction_id: int, key: TransactionKey) -> str:
    """A 6-digit authorization id derived from the request (stable for its retransmissions)."""
    # The text is the key's dataclass repr, spelt out: the generated repr is four times slower.
    text = (
        f"{transaction_id}|TransactionKey(tid={key.tid!r}, stan={key.stan!r}, "
        f"transmission={key.transmission!r})"
    )
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{int(digest[:8], 16) % 1_000_000:06d}"


@dataclass
class _PurseRow:
    code: str
    account_id: int
    program_code: str
    expires: str | None
    chains: frozenset[str]
    merchant_ids: frozenset[str]
    mccs: frozenset[str]


@dataclass(slots=True)
class _Changes:
    """What one job changes, kept apart until the job has succeeded."""

    accounts: dict[int, Account] = field(default_factory=dict)
    pending: dict[str, tuple[Transfer, PendingState, str | None]] = field(default_factory=dict)
    transfers: list[tuple[Transfer, int]] = field(default_factory=list)
    state_inserts: list[tuple[Any, ...]] = field(default_factory=list)
    state_updates: list[tuple[Any, ...]] = field(default_factory=list)
    card: CardRecord | None = None
    days: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    transaction: dict[str, Any] | None = None
    transfer_ids: tuple[str, ...] = ()
    updates: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    tombstone: tuple[str, str, str, int] | None = None
    event: tuple[Any, ...] | None = None


@dataclass
class _Cache:
    """What stays true between batches while no other connection writes (SQLite only)."""

    data_version: int
    accounts: dict[int, Account] = field(default_factory=dict)
    cards: dict[int, CardRecord] = field(default_factory=dict)
    purses: dict[str, list[_PurseRow]] = field(default_factory=dict)
    days: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    next_id: int = 0
    journal_head: tuple[int, str] | None = None
    closed_through: str | None = None  # the last closed business date ("" for none)

    def size(self) -> int:
        return len(self.accounts) + len(self.cards) + len(self.days)


class _Batch:
    """The working set of one batch and the writes it owes the database."""

    def __init__(
        self,
        store: Store,
        connection: Connection,
        jobs: Sequence[AuthorizationJob],
        cache: _Cache | None = None,
    ):
        self.store = store
        self.connection = connection
        self.postgres = not store.is_sqlite
        # The raw DB-API cursor: the engine's statements are plain SQL, and going around
        # SQLAlchemy's execution machinery is most of what a small batch costs.
        self.cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self.cache = cache
        self.accounts: dict[int, Account] = cache.accounts if cache else {}
        self.cards: dict[int, CardRecord] = cache.cards if cache else {}
        self.purses: dict[str, list[_PurseRow]] = cache.purses if cache else {}
        self.days: dict[tuple[int, str], tuple[int, int]] = cache.days if cache else {}
        self.pending: dict[str, tuple[Transfer, PendingState, str | None]] = {}
        self.records: dict[int, TransactionRecord] = {}
        # The batch's new requests not yet asked for as records (row, transfer ids): only a
        # later job of the same batch that refers to one needs its record, so it is built
        # then (see record()). Building one per job was some 5% of the engine's CPU.
        self.unbuilt: dict[int, tuple[dict[str, Any], tuple[str, ...]]] = {}
        self.keys: dict[TransactionKey, int] = {}  # the batch's new requests: key -> id
        # Discount rule uses, (member, rule, since) -> count: counted in SQL once per batch,
        # right after a flush, then kept up to date by every job the batch merges.
        self.rule_uses: dict[tuple[str, str, str], int] = {}
        self.stored: dict[TransactionKey, StoredTransaction] = {}
        self.tombstones: set[TransactionKey] = set()
        self.new_transactions: dict[TransactionKey, StoredTransaction] = {}
        self._ids: list[int] = []
        self._next_id = 0
        # writes owed
        self.tx_inserts: list[dict[str, Any]] = []
        self.transfer_inserts: list[tuple[Transfer, int, str, str]] = []
        self.state_inserts: list[tuple[Any, ...]] = []
        self.state_updates: list[tuple[Any, ...]] = []
        self.dirty_accounts: set[int] = set()
        self.dirty_cards: set[int] = set()
        self.dirty_days: set[tuple[int, str]] = set()
        self.tx_updates: list[tuple[int, dict[str, Any]]] = []
        self.tombstone_inserts: list[tuple[str, str, str, int]] = []
        self.outbox_inserts: list[tuple[Any, ...]] = []
        self.closed_through = self._closed_through()
        self._prefetch(jobs)

    # --- SQL helpers ---------------------------------------------------------------------------

    def sql(self, statement: str) -> str:
        """``?`` placeholders in the driver's own style."""
        return statement.replace("?", "%s") if self.postgres else statement

    def rows(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        self.cursor.execute(self.sql(statement), tuple(params))
        if self.cursor.description is None:  # an UPDATE or INSERT: nothing to fetch
            return []
        return list(self.cursor.fetchall())

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cursor.executemany(self.sql(statement), rows)

    def _in(self, values: Sequence[Any]) -> str:
        return ",".join("?" * len(values))

    def _lock(self) -> str:
        return " FOR UPDATE" if self.postgres else ""

    # --- prefetch ------------------------------------------------------------------------------

    def _prefetch(self, jobs: Sequence[AuthorizationJob]) -> None:
        keys = {job.key for job in jobs}
        tids = sorted({k.tid for k in keys})
        stans = sorted({k.stan for k in keys})
        for row in self.rows(
            "SELECT id, tid, stan, transmission, mti, request_digest, response_code, "
            f"response_json, card_id FROM transactions WHERE tid IN ({self._in(tids)}) "
            f"AND stan IN ({self._in(stans)})",
            [*tids, *stans],
        ):
            key = TransactionKey(row[1], row[2], row[3])
            if key in keys:
                self.stored[key] = StoredTransaction(
                    id=row[0],
                    key=key,
                    mti=row[4],
                    request_digest=row[5],
                    response_code=row[6],
                    response_fields={int(k): v for k, v in json.loads(row[7]).items()},
                    card_id=row[8],
                )
        for row in self.rows(
            f"SELECT tid, stan, transmission FROM tombstones WHERE tid IN ({self._in(tids)}) "
            f"AND stan IN ({self._in(stans)})",
            [*tids, *stans],
        ):
            self.tombstones.add(TransactionKey(row[0], row[1], row[2]))
        card_ids = sorted({job.card_id for job in jobs if job.card_id is not None})
        missing_cards = [i for i in card_ids if i not in self.cards]
        if missing_cards:
            self._load_cards(missing_cards)
        pairs = sorted(
            {
                (job.card_id, job.business_date)
                for job in jobs
                if job.card_id is not None and (job.card_id, job.business_date) not in self.days
            }
        )
        if pairs:
            days_cards = sorted({c for c, _ in pairs})
            dates = sorted({d for _, d in pairs})
            for row in self.rows(
                "SELECT card_id, business_date, amount, count FROM card_days WHERE card_id IN "
                f"({self._in(days_cards)}) AND business_date IN ({self._in(dates)})",
                [*days_cards, *dates],
            ):
                self.days[(row[0], row[1])] = (int(row[2]), int(row[3]))
            for pair in pairs:
                self.days.setdefault(pair, (0, 0))

    def _closed_through(self) -> str:
        """The last closed business date ("" when none): requests may not count in it."""
        if self.cache is not None and self.cache.closed_through is not None:
            return self.cache.closed_through
        found = self.rows("SELECT MAX(business_date) FROM business_days")
        closed = str(found[0][0] or "") if found else ""
        if self.cache is not None:
            self.cache.closed_through = closed
        return closed

    def open_date(self, business_date: str) -> str:
        """``business_date``, or the first open date after the closed ones (a request that
        arrives after an early cutover, or a late advice, counts in the open date)."""
        if not self.closed_through or business_date > self.closed_through:
            return business_date
        return (date.fromisoformat(self.closed_through) + timedelta(days=1)).isoformat()

    def _load_cards(self, card_ids: Sequence[int]) -> None:
        columns = (
            "id, member_id, pan_masked, expiry, service_code, pvki, pvv, state, "
            "pin_failures, daily_amount_max, daily_count_max, payment_amount_max, "
            "pin_tries_max"
        )
        for row in self.rows(
            f"SELECT {columns} FROM cards WHERE id IN ({self._in(card_ids)}) ORDER BY id"
            + self._lock(),
            card_ids,
        ):
            self.cards[row[0]] = CardRecord(*row)
        members = sorted(
            {c.member_id for c in self.cards.values() if c.member_id not in self.purses}
        )
        if not members:
            return
        account_ids: list[int] = []
        for row in self.rows(
            "SELECT p.member_id, p.code, p.account_id, p.program_code, p.expires, k.chains, "
            "k.merchant_ids, k.mccs FROM purses p LEFT JOIN purse_kinds k ON k.code = p.code "
            f"WHERE p.member_id IN ({self._in(members)}) ORDER BY p.member_id, p.code",
            members,
        ):
            self.purses.setdefault(row[0], []).append(
                _PurseRow(
                    row[1], row[2], row[3], row[4], _split(row[5]), _split(row[6]), _split(row[7])
                )
            )
            account_ids.append(row[2])
        for member in members:
            self.purses.setdefault(member, [])
        self.load_accounts(account_ids)

    def load_accounts(self, account_ids: Iterable[int]) -> None:
        """Bring accounts into the working set (locked on PostgreSQL)."""
        # Test membership per id: the working set can hold many thousands of accounts, too
        # many to copy into a set for every posting.
        missing = sorted({i for i in account_ids if i not in self.accounts})
        if not missing:
            return
        for row in self.rows(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id IN ({self._in(missing)}) "
            "ORDER BY id" + self._lock(),
            missing,
        ):
            self.accounts[row[0]] = Account(row[0], row[1], row[2], AccountFlags(row[3]), *row[4:8])

    def day(self, card_id: int, business_date: str) -> tuple[int, int]:
        """A card's approved payments (amount, count) on a business date."""
        key = (card_id, business_date)
        if key not in self.days:
            found = self.rows(
                "SELECT amount, count FROM card_days WHERE card_id = ? AND business_date = ?",
                [card_id, business_date],
            )
            self.days[key] = (int(found[0][0]), int(found[0][1])) if found else (0, 0)
        return self.days[key]

    def record(self, transaction_id: int) -> TransactionRecord | None:
        """A request the batch holds (read, or written by one of its jobs), else None."""
        found = self.records.get(transaction_id)
        if found is None and transaction_id in self.unbuilt:
            row, transfer_ids = self.unbuilt.pop(transaction_id)
            found = self.records[transaction_id] = transaction_record_of(row, transfer_ids)
        return found

    def count_rule_uses(self, member_id: str, rule: str, since: str) -> int:
        """Uses of discount ``rule`` by ``member_id`` since ``since``, this batch's included."""
        key = (member_id, rule, since)
        found = self.rule_uses.get(key)
        if found is None:
            self.flush()  # the database then holds all the batch has done: count there
            rows = self.rows(_COUNT_RULE_USES, (member_id, rule, since))
            found = self.rule_uses[key] = int(rows[0][0]) if rows else 0
        return found

    def _count_rule_use(
        self, member_id: str | None, rule: str, business_date: str, change: int
    ) -> None:
        if member_id is None or not rule:
            return
        for key in self.rule_uses:
            if key[0] == member_id and key[1] == rule and business_date >= key[2]:
                self.rule_uses[key] += change

    def allocate_id(self, count_hint: int) -> int:
        """A new transactions.id."""
        if self.postgres:
            if not self._ids:
                self._ids = [
                    int(r[0])
                    for r in self.rows(
                        "SELECT nextval(pg_get_serial_sequence('transactions', 'id')) "
                        "FROM generate_series(1, ?)",
                        [max(count_hint, 1)],
                    )
                ]
            return self._ids.pop(0)
        if not self._next_id:
            if self.cache is not None and self.cache.next_id:
                self._next_id = self.cache.next_id
            else:
                found = self.rows("SELECT COALESCE(MAX(id), 0) FROM transactions")
                self._next_id = int(found[0][0]) + 1
        self._next_id += 1
        if self.cache is not None:
            self.cache.next_id = self._next_id
        return self._next_id - 1

    def pending_transfer(self, pending_id: str) -> tuple[Transfer, PendingState, str | None] | None:
        """A hold and its state, from the batch or the database."""
        if pending_id in self.pending:
            return self.pending[pending_id]
        self.flush()
        row = self.connection.execute(
            schema.transfers.select().where(schema.transfers.c.id == pending_id)
        ).one_or_none()
        if row is None:
            return None
        state_rows = self.rows(
            "SELECT state, expires_at FROM transfer_states WHERE pending_id = ?", [pending_id]
        )
        state = PendingState(state_rows[0][0]) if state_rows else PendingState.POSTED
        expires = state_rows[0][1] if state_rows else None
        transfer = Transfer(
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
        self.pending[pending_id] = (transfer, state, expires)
        return self.pending[pending_id]

    # --- running a job -------------------------------------------------------------------------

    def run(self, job: AuthorizationJob) -> JobResult:
        """Decide and apply one job (raises on failure; nothing of it is kept then)."""
        stored = self.stored.get(job.key) or self.new_transactions.get(job.key)
        if stored is not None:
            return replayed_result(stored, job.request_digest)
        open_date = self.open_date(job.business_date)
        if open_date != job.business_date:
            job = replace(job, business_date=open_date)
        changes = _Changes()
        view = _BatchView(self, job, changes)
        outcome = job.decide(view)
        transaction_id = self.allocate_id(1)
        card = view.card
        if outcome.pin_failures is not None and card is not None:
            changes.card = replace(card, pin_failures=outcome.pin_failures)
        for index, posting in enumerate(outcome.postings):
            self._post(job, posting, index, transaction_id, changes)
        fields = dict(outcome.response_fields)
        rrn = fields.get(37) or (f"{transaction_id:012d}" if job.assign_rrn else "")
        if rrn:
            fields[37] = rrn
        auth_id = ""
        if outcome.response_code == "00" and outcome.postings:
            auth_id = authorization_id(transaction_id, job.key)
            fields[38] = auth_id
        row: dict[str, Any] = dict(_TX_DEFAULTS)
        row.update(
            id=transaction_id,
            tid=job.key.tid,
            stan=job.key.stan,
            transmission=job.key.transmission,
            mti=job.mti,
            kind=job.kind,
            processing_code=job.processing_code,
            request_digest=job.request_digest,
            card_id=job.card_id,
            member_id=None if card is None else card.member_id,
            merchant_id=job.merchant_id,
            pan_masked=job.pan_masked,
            amount=outcome.amount,
            response_code=outcome.response_code,
            rrn=rrn,
            auth_id=auth_id,
            response_json=_RESPONSE_JSON({str(k): v for k, v in sorted(fields.items())}),
            business_date=job.business_date,
            created_at=job.now,
        )
        row.update(outcome.record)
        changes.transaction = row
        changes.transfer_ids = tuple([t.id for t, _ in changes.transfers])
        if outcome.response_code == "00" and job.kind in PAYMENT_KINDS and job.card_id:
            amount, count = self.day(job.card_id, job.business_date)
            changes.days[(job.card_id, job.business_date)] = (amount + outcome.amount, count + 1)
        for original_id, values in outcome.updates:
            self._update_original(original_id, dict(values), changes, view)
        if outcome.tombstone is not None:
            key = outcome.tombstone
            if key not in self.tombstones:
                changes.tombstone = (key.tid, key.stan, key.transmission, transaction_id)
        payload = decision_event(job, outcome, rrn, auth_id, transaction_id)
        changes.event = (
            payload["event_id"],
            f"{TOPIC_TRANSACTIONS_PREFIX}{job.kind}",
            EVENT_JSON(payload),
            job.now,
        )
        self._merge(job, changes, fields, outcome.response_code)
        return JobResult(outcome.response_code, fields)

    def _post(
        self,
        job: AuthorizationJob,
        posting: Posting,
        index: int,
        transaction_id: int,
        changes: _Changes,
    ) -> None:
        transfer = Transfer(
            id=posting.id or transfer_digest(job.key, index),
            debit_account_id=posting.debit_account_id,
            credit_account_id=posting.credit_account_id,
            amount=posting.amount,
            ledger=364,
            code=posting.code,
            flags=posting.flags,
            pending_id=posting.pending_id,
            timeout_s=posting.timeout_s,
            user_data=posting.user_data,
        )
        self.load_accounts([transfer.debit_account_id, transfer.credit_account_id])
        debit = self._account(transfer.debit_account_id, changes)
        credit = self._account(transfer.credit_account_id, changes)
        pending = state = None
        if transfer.pending_id is not None:
            found = changes.pending.get(transfer.pending_id) or self.pending_transfer(
                transfer.pending_id
            )
            if found is not None:
                pending, state, expires = found
                state = effective_pending_state(state, expires, job.now)
        status = check_transfer(transfer, debit, credit, None, pending, state)
        if status is not TransferStatus.CREATED:
            raise TransferRejected(status, transfer)
        assert debit is not None and credit is not None  # check_transfer said so
        debit, credit = apply_transfer(debit, credit, transfer, pending)
        changes.accounts[debit.id] = debit
        changes.accounts[credit.id] = credit
        changes.transfers.append((transfer, transaction_id))
        flags = int(transfer.flags)
        if flags & FLAG_PENDING:
            expires = None
            if transfer.timeout_s:
                expires = (
                    datetime.fromisoformat(job.now) + timedelta(seconds=transfer.timeout_s)
                ).isoformat()
            changes.pending[transfer.id] = (transfer, PendingState.PENDING, expires)
            changes.state_inserts.append(
                (transfer.id, PendingState.PENDING.value, transfer.amount, expires, None)
            )
        elif pending is not None:
            resolved = PendingState.POSTED if flags & FLAG_POST_PENDING else PendingState.VOIDED
            changes.pending[pending.id] = (pending, resolved, None)
            changes.state_updates.append((resolved.value, transfer.id, pending.id))

    def _account(self, account_id: int, changes: _Changes) -> Account | None:
        """An account as the job sees it: its own changes first, then the batch's."""
        found = changes.accounts.get(account_id)
        return found if found is not None else self.accounts.get(account_id)

    def _update_original(
        self, original_id: int, values: dict[str, Any], changes: _Changes, view: _BatchView
    ) -> None:
        original = view.transaction_by_id(original_id)
        changes.updates.append((original_id, values))
        if original is None or "reversed_amount" not in values:
            return
        if original.kind not in PAYMENT_KINDS or not original.approved or not original.card_id:
            return
        before, after = original.reversed_amount, int(values["reversed_amount"])
        amount, count = changes.days.get((original.card_id, original.business_date)) or self.day(
            original.card_id, original.business_date
        )
        gone = 1 if before < original.amount <= after else 0
        changes.days[(original.card_id, original.business_date)] = (
            amount - (after - before),
            count - gone,
        )

    def _merge(
        self, job: AuthorizationJob, changes: _Changes, fields: dict[int, str], code: str
    ) -> None:
        self.accounts.update(changes.accounts)
        self.dirty_accounts.update(changes.accounts)
        self.pending.update(changes.pending)
        new = self.connection.info.setdefault(NEW_TRANSFERS, [])
        for transfer, transaction_id in changes.transfers:
            self.transfer_inserts.append((transfer, transaction_id, job.business_date, job.now))
            new.append((transfer, job.business_date, job.now))
        self.state_inserts += changes.state_inserts
        self.state_updates += changes.state_updates
        if changes.card is not None:
            self.cards[changes.card.id] = changes.card
            self.dirty_cards.add(changes.card.id)
        self.days.update(changes.days)
        self.dirty_days.update(changes.days)
        row = changes.transaction
        assert row is not None
        self.tx_inserts.append(row)
        new_id: int = row["id"]
        self.unbuilt[new_id] = (row, changes.transfer_ids)
        if self.rule_uses and _is_rule_use(
            row["kind"], row["response_code"], row["amount"], row["reversed_amount"]
        ):
            self._count_rule_use(row["member_id"], row["discount_rule"], row["business_date"], 1)
        self.keys[job.key] = new_id
        for original_id, values in changes.updates:
            self.tx_updates.append((original_id, values))
            original = self.record(original_id)
            if original is not None:
                updated = self.records[original_id] = replace(original, **values)
                if self.rule_uses:
                    change = _record_is_rule_use(updated) - _record_is_rule_use(original)
                    if change:
                        self._count_rule_use(
                            updated.member_id,
                            updated.discount_rule,
                            updated.business_date,
                            change,
                        )
        if changes.tombstone is not None:
            self.tombstone_inserts.append(changes.tombstone)
            self.tombstones.add(TransactionKey(*changes.tombstone[:3]))
        assert changes.event is not None
        self.outbox_inserts.append(changes.event)
        self.new_transactions[job.key] = StoredTransaction(
            id=new_id,
            key=job.key,
            mti=job.mti,
            request_digest=job.request_digest,
            response_code=code,
            response_fields=fields,
            card_id=job.card_id,
        )

    # --- writing -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything the batch owes the database (inside its transaction)."""
        execute = self.execute_many
        if self.tx_inserts:
            execute(_INSERT_TRANSACTIONS, [_TX_VALUES(r) for r in self.tx_inserts])
            self.tx_inserts.clear()
        if self.transfer_inserts:
            execute(
                _INSERT_TRANSFERS,
                [
                    (
                        t.id,
                        t.debit_account_id,
                        t.credit_account_id,
                        t.amount,
                        t.ledger,
                        int(t.code),
                        int(t.flags),
                        t.pending_id,
                        t.user_data,
                        t.timeout_s,
                        transaction_id,
                        business_date,
                        now,
                    )
                    for t, transaction_id, business_date, now in self.transfer_inserts
                ],
            )
            self.transfer_inserts.clear()
        if self.state_inserts:
            execute(_INSERT_STATES, list(self.state_inserts))
            self.state_inserts.clear()
        if self.state_updates:
            execute(_UPDATE_STATES, list(self.state_updates))
            self.state_updates.clear()
        if self.dirty_accounts:
            execute(
                _UPDATE_ACCOUNTS,
                [
                    (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.id)
                    for a in (self.accounts[i] for i in sorted(self.dirty_accounts))
                ],
            )
            self.dirty_accounts.clear()
        if self.dirty_cards:
            execute(
                _UPDATE_CARDS,
                [(self.cards[i].pin_failures, i) for i in sorted(self.dirty_cards)],
            )
            self.dirty_cards.clear()
        if self.dirty_days:
            execute(
                _UPSERT_CARD_DAYS,
                [(c, d, *self.days[(c, d)]) for c, d in sorted(self.dirty_days)],
            )
            self.dirty_days.clear()
        for original_id, values in self.tx_updates:
            names = sorted(values)
            self.rows(
                f"UPDATE transactions SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
                (*[values[n] for n in names], original_id),
            )
        self.tx_updates.clear()
        if self.tombstone_inserts:
            execute(_INSERT_TOMBSTONES, list(self.tombstone_inserts))
            self.tombstone_inserts.clear()
        if self.outbox_inserts:
            execute(_INSERT_OUTBOX, list(self.outbox_inserts))
            self.outbox_inserts.clear()

    def seal(self) -> None:
        """Append the batch's new transfers to the hash-chained journal (as the store does,
        with the chain head kept in the cache while it is valid)."""
        new = self.connection.info.get(NEW_TRANSFERS) or []
        if not new:
            return
        if self.cache is not None and self.cache.journal_head is not None:
            seq, previous = self.cache.journal_head
        else:
            head = self.rows("SELECT seq, hash FROM journal_head WHERE id = 1" + self._lock())
            seq, previous = int(head[0][0]), str(head[0][1])
        rows = []
        for transfer, business_date, now in new:
            seq += 1
            digest = journal_hash(previous, canonical_transfer(transfer, business_date, now))
            rows.append((seq, transfer.id, previous, digest))
            previous = digest
        self.execute_many(_INSERT_JOURNAL, rows)
        self.rows("UPDATE journal_head SET seq = ?, hash = ? WHERE id = 1", (seq, previous))
        if self.cache is not None:
            self.cache.journal_head = (seq, previous)
        new.clear()


class _BatchView:
    """:class:`ledger.domain.LedgerView` of one job over the batch's working set."""

    def __init__(self, batch: _Batch, job: AuthorizationJob, changes: _Changes) -> None:
        self._batch = batch
        self._job = job
        self._changes = changes
        self._sql: _View | None = None
        self.card: CardRecord | None = None
        self._snapshot: CardSnapshot | None = None
        self._loaded = False

    def _fallback(self) -> _View:
        self._batch.flush()
        if self._sql is None:
            self._sql = _View(self._batch.store, self._batch.connection, self._job)
        return self._sql

    def _remember(self, record: TransactionRecord | None) -> TransactionRecord | None:
        """The batch's copy of a record that SQL returned: the one the batch already holds
        (it may be newer), else this one, now held."""
        if record is None:
            return None
        held = self._batch.record(record.id)
        if held is None:
            held = self._batch.records[record.id] = record
        return held

    @property
    def business_date(self) -> str:
        return self._job.business_date

    @property
    def snapshot(self) -> CardSnapshot | None:
        if self._loaded:
            return self._snapshot
        self._loaded = True
        card_id = self._job.card_id
        if card_id is None:
            return None
        batch = self._batch
        if card_id not in batch.cards:
            batch._load_cards([card_id])
        card = batch.cards.get(card_id)
        if card is None:
            return None
        self.card = card
        purses = tuple(
            Purse(
                code=p.code,
                account=batch.accounts[p.account_id],
                program_code=p.program_code,
                expires=p.expires,
                chains=p.chains,
                merchant_ids=p.merchant_ids,
                mccs=p.mccs,
            )
            for p in batch.purses.get(card.member_id, [])
        )
        self._snapshot = CardSnapshot(card=card, purses=purses)
        return self._snapshot

    def transaction_by_key(self, key: TransactionKey) -> TransactionRecord | None:
        if key in self._batch.keys:
            return self._batch.record(self._batch.keys[key])
        return self._remember(self._fallback().transaction_by_key(key))

    def transaction_by_rrn(self, merchant_id: str, rrn: str) -> TransactionRecord | None:
        return self._remember(self._fallback().transaction_by_rrn(merchant_id, rrn))

    def transaction_by_id(self, transaction_id: int) -> TransactionRecord | None:
        found = self._batch.record(transaction_id)
        if found is not None:
            return found
        return self._remember(self._fallback().transaction_by_id(transaction_id))

    def card_day_totals(self, card_id: int, business_date: str) -> tuple[int, int]:
        return self._batch.day(card_id, business_date)

    def rule_uses(self, member_id: str, rule: str, since: str) -> int:
        return self._batch.count_rule_uses(member_id, rule, since)

    def terminal_totals(self, tid: str, business_date: str) -> TerminalTotals:
        return self._fallback().terminal_totals(tid, business_date)

    def postings_of(self, transaction_id: int) -> tuple[Posting, ...]:
        return self._fallback().postings_of(transaction_id)

    def children(self, original_id: int) -> tuple[TransactionRecord, ...]:
        return tuple(r for r in self._fallback().children(original_id))

    def tombstoned(self, key: TransactionKey) -> bool:
        return key in self._batch.tombstones


def _driver_errors(store: Store) -> tuple[type[BaseException], ...]:
    """The database driver's own error class (raised by the raw cursor)."""
    dbapi = store.engine.dialect.dbapi
    error = getattr(dbapi, "Error", None)
    return (error,) if isinstance(error, type) else ()


@dataclass(frozen=True)
class _LoopFuture:
    """An asyncio future to be resolved on its own loop."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[JobResult]

    def set_exception(self, error: BaseException) -> None:
        pairs: list[tuple[asyncio.Future[JobResult], JobResult | BaseException]] = [
            (self.future, error)
        ]
        self.loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[asyncio.Future[JobResult], JobResult | BaseException]]) -> None:
    for future, result in pairs:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _split(value: str | None) -> frozenset[str]:
    return frozenset(v for v in (value or "").split(",") if v)


class GroupCommitter:
    """Runs authorization jobs in batches: one commit for many, answers only after it."""

    def __init__(self, store: Store, *, batch_max: int = 256) -> None:
        assert batch_max > 0
        self.store = store
        self.batch_max = batch_max
        self._queue: queue.SimpleQueue[
            tuple[AuthorizationJob, concurrent.futures.Future[JobResult] | _LoopFuture] | None
        ] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="ledger-commit", daemon=True)
        self.batches = 0
        self.jobs = 0
        self.lock_retries = 0
        self.last_batch_size = 0
        self.last_batch_s = 0.0
        self._started = False
        self._connection: Connection | None = None
        self._cache: _Cache | None = None
        self._driver_errors = _driver_errors(store)

    def start(self) -> None:
        """Start the commit thread."""
        self._started = True
        self._worker.start()

    def submit(self, job: AuthorizationJob) -> concurrent.futures.Future[JobResult]:
        """Queue a job; the future resolves after its batch has committed (or failed)."""
        assert self._started, "GroupCommitter.start() first"
        future: concurrent.futures.Future[JobResult] = concurrent.futures.Future()
        self._queue.put((job, future))
        return future

    def submit_to_loop(
        self, job: AuthorizationJob, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[JobResult]:
        """Queue a job for an asyncio caller: the batch's results reach ``loop`` in one wake-up
        (one ``call_soon_threadsafe`` per batch instead of one per job)."""
        assert self._started, "GroupCommitter.start() first"
        future: asyncio.Future[JobResult] = loop.create_future()
        self._queue.put((job, _LoopFuture(loop, future)))
        return future

    def stop(self) -> None:
        """Finish every queued job, then stop the thread."""
        if self._started:
            self._queue.put(None)
            self._worker.join()
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
                try:
                    self._commit_batch(batch)
                except Exception as error:  # the thread must outlive any bug: answer, go on
                    log.exception("ledger batch failed unexpectedly")
                    self._cache = None
                    self._drop_connection()
                    for _job, future in batch:
                        with contextlib.suppress(Exception):
                            future.set_exception(LedgerError(f"batch failed: {error!r}"))
        self._drop_connection()

    def _commit_batch(
        self,
        batch: list[tuple[AuthorizationJob, Any]],
        attempt: int = 1,
    ) -> None:
        started = time.perf_counter()
        results: list[JobResult | BaseException] = []
        try:
            connection = self._connection_for_batch()
            connection.info[NEW_TRANSFERS] = []
            with write_transaction(connection):
                cache = self._cache_for(connection)
                working = _Batch(self.store, connection, [job for job, _ in batch], cache)
                for job, _future in batch:
                    results.append(self._run_one(working, job))
                working.flush()
                working.seal()
        except Exception as error:  # a failed batch (any database error) answers every job
            self._cache = None  # it may hold the failed batch's effects
            self._drop_connection()
            orig = getattr(error, "orig", error)  # SQLAlchemy wraps; the raw cursor does not
            # Lock conflicts with another process, or another process stored one of our
            # request keys first: run the batch again (the prefetch then sees its answer).
            retryable = RETRYABLE_SQLSTATES | {UNIQUE_VIOLATION}
            if getattr(orig, "sqlstate", None) in retryable and attempt < BATCH_RETRIES_MAX:
                self.lock_retries += len(batch)
                self._commit_batch(batch, attempt + 1)
                return
            log.exception("ledger commit failed; batch of %d not applied", len(batch))
            for _job, future in batch:
                future.set_exception(LedgerError(f"commit failed: {error}"))
            return
        self.batches += 1
        self.last_batch_size = len(batch)
        self.last_batch_s = time.perf_counter() - started
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
        for (_job, future), result in zip(batch, results, strict=True):
            if not isinstance(result, BaseException):
                self.jobs += 1
            if isinstance(future, _LoopFuture):
                by_loop.setdefault(future.loop, []).append((future.future, result))
            elif isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, pairs)

    def _connection_for_batch(self) -> Connection:
        # One connection for the thread's life: no pool round trip per batch, and SQLite's
        # data_version then tells whether anyone else wrote since our last commit.
        if self._connection is None:
            self._connection = self.store.engine.connect()
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.close()
            self._connection = None

    def _cache_for(self, connection: Connection) -> _Cache | None:
        if not self.store.is_sqlite:
            return None  # other processes write the same rows: nothing survives a batch
        # On the raw DB-API cursor, as the batch's own statements: through SQLAlchemy's
        # execution machinery this one statement cost some 15 times as much.
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            found = cursor.execute("PRAGMA data_version").fetchone()
        finally:
            cursor.close()
        version = int(found[0] if found else 0)
        cache = self._cache
        if cache is None or cache.data_version != version or cache.size() > CACHE_ENTRIES_MAX:
            cache = self._cache = _Cache(data_version=version)
        return cache

    def _run_one(self, working: _Batch, job: AuthorizationJob) -> JobResult | BaseException:
        try:
            return working.run(job)
        except (DBAPIError, SQLAlchemyError):
            raise  # the batch's transaction is unusable: fail (or retry) the whole batch
        except self._driver_errors:
            raise
        except TransferRejected as rejected:
            # A posting the balances do not allow: the job fails as a whole (no traceback: it
            # is an outcome, and a flood of them must not stall the thread on its log).
            log.warning(
                "authorization job rejected; nothing of it applied",
                extra={"tid": job.key.tid, "stan": job.key.stan, "status": rejected.status.value},
            )
            return rejected
        except Exception as error:  # one job's failure (even a bug) must not fail its batch
            log.exception(
                "authorization job failed; nothing of it applied",
                extra={"tid": job.key.tid, "stan": job.key.stan},
            )
            return error
