"""Domain records the ledger stores and the switch reads: cards, purses, transactions, jobs.

All frozen values. An :class:`AuthorizationJob` is what the switch hands to the ledger's group
committer: the transaction key (for exactly-once), and a pure ``decide`` function that is called
inside the database transaction with a fresh, locked :class:`CardSnapshot` and returns an
:class:`Outcome` (response code, transfers to post, card updates, response fields).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ledger.model import Account, TransferCode

CURRENCY_IRR = 364


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


@dataclass(frozen=True, slots=True)
class Posting:
    """One transfer a decision asks for."""

    debit_account_id: int
    credit_account_id: int
    amount: int
    code: TransferCode


@dataclass(frozen=True)
class Outcome:
    """What ``decide`` returns: the answer and the ledger effects that go with it."""

    response_code: str
    response_fields: Mapping[int, str] = field(default_factory=dict)
    postings: tuple[Posting, ...] = ()
    pin_failures: int | None = None  # new value of the card's PIN failure counter
    amount: int = 0


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
    decide: Callable[[CardSnapshot | None], Outcome]
    assign_rrn: bool = True


@dataclass(frozen=True)
class JobResult:
    """The committed answer: fresh (``replayed`` False) or the stored one of an earlier request."""

    response_code: str
    response_fields: Mapping[int, str]
    replayed: bool = False
    conflict: bool = False  # same key, different content: answer 94
