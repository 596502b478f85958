"""Domain records the ledger stores and the switch reads: cards, purses, transactions, jobs.

All frozen values. An :class:`AuthorizationJob` is what the switch hands to the ledger's group
committer: the transaction key (for exactly-once), and a ``decide`` function that is called
inside the database transaction with a :class:`LedgerView` (the fresh, locked card snapshot and
read access to earlier requests) and returns an :class:`Outcome` (response code, transfers to
post, card and original-request updates, response fields, event fields).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.model import Account, TransferCode, TransferFlags

CURRENCY_IRR = 364


def mask_pan(pan: str) -> str:
    """A PAN as it may be shown anywhere: first 6 and last 4 digits, the rest ``*`` (a value
    too short to keep 10 digits is all ``*``).

    >>> mask_pan("6362144899564327")
    '636214******4327'
    """
    if len(pan) <= 10:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


@dataclass(frozen=True, slots=True)
class CardRecord:
    """A card as the ledger holds it (never the clear PAN)."""

    id: int
    member_id: str
    pan_masked: str
    expiry: str  # YYMM, valid through the end of that month
    service_code: str
    pvki: int
    pvv: str
    state: str  # active | blocked
    pin_failures: int
    daily_amount_max: int
    daily_count_max: int
    payment_amount_max: int
    pin_tries_max: int


@dataclass(frozen=True, slots=True)
class Purse:
    """A member's purse: its two-letter code, account, funding program and restriction."""

    code: str
    account: Account
    program_code: str
    expires: str | None  # YYYY-MM-DD, last day it may pay; None = never
    chains: frozenset[str] = frozenset()
    merchant_ids: frozenset[str] = frozenset()
    mccs: frozenset[str] = frozenset()

    @property
    def general(self) -> bool:
        """True for an unrestricted purse."""
        return not (self.chains or self.merchant_ids or self.mccs)


@dataclass(frozen=True, slots=True)
class CardSnapshot:
    """A card with its member's purses, read inside the authorizing transaction."""

    card: CardRecord
    purses: tuple[Purse, ...]


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What makes a terminal's request unique: terminal, STAN and transmission time (field 7)."""

    tid: str
    stan: str
    transmission: str


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    """A request already answered: its digest and the response fields sent (without MAC)."""

    id: int
    key: TransactionKey
    mti: str
    request_digest: str
    response_code: str
    response_fields: Mapping[int, str]
    card_id: int | None = None


@dataclass(frozen=True, slots=True)
class Posting:
    """One transfer a decision asks for (all postings of a decision succeed or fail together).

    ``id`` is derived from the request when empty. Holds are ``PENDING`` postings with a
    ``timeout_s``; a completion or reversal resolves one with ``POST_PENDING``/``VOID_PENDING``
    and ``pending_id``.
    """

    debit_account_id: int
    credit_account_id: int
    amount: int
    code: TransferCode
    flags: TransferFlags = TransferFlags.NONE
    pending_id: str | None = None
    timeout_s: int = 0
    id: str = ""
    user_data: str = ""


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """A stored request/response of the switch journal (what flows look up)."""

    id: int
    tid: str
    stan: str
    transmission: str
    mti: str
    kind: str
    processing_code: str
    card_id: int | None
    member_id: str | None
    merchant_id: str | None
    pan_masked: str | None
    amount: int
    response_code: str
    rrn: str
    auth_id: str
    business_date: str
    created_at: str
    discount: int
    discount_rule: str
    discount_funded_by: str
    amount_charged: int
    purses_used: str
    original_id: int | None
    reversed_amount: int
    refunded_amount: int
    hold_state: str
    hold_expires_at: str | None
    tombstone: bool
    transfer_ids: tuple[str, ...] = ()

    @property
    def approved(self) -> bool:
        """True when the switch answered 00."""
        return self.response_code == "00"


@dataclass(frozen=True, slots=True)
class TerminalTotals:
    """Reconciliation totals of one terminal for one business date."""

    debits_count: int
    debits_amount: int
    credits_count: int
    credits_amount: int


class LedgerView(Protocol):
    """What a decision may read inside its database transaction (rows it uses are locked)."""

    @property
    def business_date(self) -> str:
        """The business date the request counts in (the open date after an early cutover)."""
        ...

    @property
    def snapshot(self) -> CardSnapshot | None:
        """The job's card with its member's purses (None when the job has no card)."""
        ...

    def transaction_by_key(self, key: TransactionKey) -> TransactionRecord | None:
        """A stored request by terminal, STAN and transmission time."""
        ...

    def transaction_by_rrn(self, merchant_id: str, rrn: str) -> TransactionRecord | None:
        """An approved purchase or completion of ``merchant_id`` with this RRN."""
        ...

    def transaction_by_id(self, transaction_id: int) -> TransactionRecord | None:
        """A stored request by id."""
        ...

    def card_day_totals(self, card_id: int, business_date: str) -> tuple[int, int]:
        """Amount and count of the card's approved, unreversed payments on that date."""
        ...

    def rule_uses(self, member_id: str, rule: str, since: str) -> int:
        """Approved, unreversed payments of the member with this discount rule since a date."""
        ...

    def terminal_totals(self, tid: str, business_date: str) -> TerminalTotals:
        """The switch's reconciliation totals for a terminal and business date."""
        ...

    def postings_of(self, transaction_id: int) -> tuple[Posting, ...]:
        """The transfers a stored request made, as postings (ids included)."""
        ...

    def children(self, original_id: int) -> tuple[TransactionRecord, ...]:
        """Approved requests that refer to ``original_id`` (refunds, reversals, completions)."""
        ...

    def tombstoned(self, key: TransactionKey) -> bool:
        """True when a reversal arrived for this request before the request itself."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What ``decide`` returns: the answer and the ledger effects that go with it."""

    response_code: str
    response_fields: Mapping[int, str] = field(default_factory=dict)
    postings: tuple[Posting, ...] = ()
    pin_failures: int | None = None  # new value of the card's PIN failure counter
    amount: int = 0
    record: Mapping[str, Any] = field(default_factory=dict)  # more columns of the row
    updates: tuple[tuple[int, Mapping[str, Any]], ...] = ()  # (transaction id, changes)
    event: Mapping[str, Any] | None = None  # extra fields of the outbox event
    tombstone: TransactionKey | None = None  # a reversal of a request not seen yet


@dataclass(frozen=True)
class AuthorizationJob:
    """A request to authorize inside one database transaction of a group commit."""

    key: TransactionKey
    mti: str
    kind: str
    request_digest: str
    card_id: int | None
    merchant_id: str | None
    pan_masked: str | None
    business_date: str  # YYYY-MM-DD
    now: str  # UTC ISO 8601
    decide: Callable[[LedgerView], Outcome]
    assign_rrn: bool = True
    processing_code: str = ""


@dataclass(frozen=True)
class JobResult:
    """The committed answer: fresh (``replayed`` False) or the stored one of an earlier request."""

    response_code: str
    response_fields: Mapping[int, str]
    replayed: bool = False
    conflict: bool = False  # same key, different content: answer 94
