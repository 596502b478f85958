"""The ledger model, shaped like TigerBeetle: accounts, immutable transfers, status values.

Rules:

* Money is ``int`` minor units of one currency per ledger (IRR, exponent 0). No floats.
* An account carries posted and pending debit and credit totals and flags that constrain them.
* A transfer moves ``amount`` from a debit account to a credit account. It is never changed or
  deleted; its id is chosen by the caller, so a retry of the same transfer is recognised.
* :func:`check_transfer` decides whether a transfer may be applied, as a status value. Statuses
  are declared in precedence order: the first that applies is the answer. Business outcomes are
  values, never exceptions.
* Applying a transfer adds ``amount`` to the debit side of one account and the credit side of
  the other, so the sum of all debits always equals the sum of all credits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class AccountFlags(enum.IntFlag):
    """Balance constraints checked inside the same database transaction as the transfer."""

    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1  # member purses, merchant payables: never negative
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2


class TransferFlags(enum.IntFlag):
    """How a transfer behaves. Values never change: they are stored."""

    NONE = 0
    LINKED = 1  # succeeds or fails together with the next transfer of the chain
    PENDING = 2  # a hold: moves pending totals; later posted, voided or expired
    POST_PENDING = 4  # posts (all or part of) the pending transfer ``pending_id``
    VOID_PENDING = 8  # releases the pending transfer ``pending_id``


# The flag values as plain ints, for the checks below and the authorization engine's: an
# ``IntFlag`` operator (``&``, ``|``) builds a new enum member in Python code each time, which
# made these flag tests a visible share of the engine's CPU per job.
FLAG_PENDING = int(TransferFlags.PENDING)
FLAG_POST_PENDING = int(TransferFlags.POST_PENDING)
FLAG_VOID_PENDING = int(TransferFlags.VOID_PENDING)
_RESOLVING = FLAG_POST_PENDING | FLAG_VOID_PENDING
_KINDS = FLAG_PENDING | _RESOLVING
_DEBITS_LIMITED = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_LIMITED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


class PendingState(enum.Enum):
    """Where a pending transfer stands."""

    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


def effective_pending_state(state: PendingState, expires_at: str | None, now: str) -> PendingState:
    """A hold's state as of ``now``: a pending hold past its timeout is expired, even before
    the sweep has recorded it (``expires_at`` and ``now`` are UTC ISO 8601 texts)."""
    if state is PendingState.PENDING and expires_at is not None and expires_at <= now:
        return PendingState.EXPIRED
    return state


class TransferCode(enum.IntEnum):
    """Why money moved. Values never change: they are stored."""

    DISBURSEMENT = 1
    PURCHASE = 2
    REFUND = 3
    REVERSAL = 4
    DISCOUNT_FUNDING = 5
    EXPIRY = 6


class TransferStatus(enum.Enum):
    """Result of creating a transfer, in precedence order (first that applies wins)."""

    CREATED = "created"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    EXISTS = "exists"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    PENDING_ID_MUST_BE_SET = "pending_id_must_be_set"
    PENDING_ID_MUST_NOT_BE_SET = "pending_id_must_not_be_set"
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    LEDGERS_MUST_BE_EQUAL = "ledgers_must_be_equal"
    PENDING_TRANSFER_HAS_DIFFERENT_ACCOUNTS = "pending_transfer_has_different_accounts"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"


@dataclass(frozen=True, slots=True)
class Account:
    """An account and its running totals (minor units)."""

    id: int
    code: str
    ledger: int
    flags: AccountFlags
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    @property
    def balance_credit(self) -> int:
        """Posted credits less posted debits: what a purse holds for its member."""
        return self.credits_posted - self.debits_posted

    @property
    def available_credit(self) -> int:
        """Credit balance less pending debits (holds): what may still be spent."""
        return self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, slots=True)
class Transfer:
    """An immutable movement of money between two accounts."""

    id: str
    debit_account_id: int
    credit_account_id: int
    amount: int
    ledger: int
    code: TransferCode
    flags: TransferFlags = TransferFlags.NONE
    pending_id: str | None = None
    user_data: str = ""
    timeout_s: int = 0  # pending transfers only: expires this many seconds after creation


def check_transfer(
    transfer: Transfer,
    debit: Account | None,
    credit: Account | None,
    existing: Transfer | None = None,
    pending: Transfer | None = None,
    pending_state: PendingState | None = None,
) -> TransferStatus:
    """Decide, without side effects, whether ``transfer`` may be applied.

    For a post or void, ``pending`` is the transfer named by ``pending_id`` (None when there is
    no such transfer) and ``pending_state`` its state. A post's amount of 0 means "the whole
    pending amount"; a void always releases the whole pending amount.

    >>> a = Account(1, "purse", 364, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS, credits_posted=5)
    >>> b = Account(2, "merchant", 364, AccountFlags.NONE)
    >>> check_transfer(Transfer("t1", 1, 2, 6, 364, TransferCode.PURCHASE), a, b)
    <TransferStatus.EXCEEDS_CREDITS: 'exceeds_credits'>
    """
    if existing is not None:
        same = replace(existing, id=transfer.id) == transfer
        return TransferStatus.EXISTS if same else TransferStatus.EXISTS_WITH_DIFFERENT_FIELDS
    kinds = int(transfer.flags) & _KINDS
    if bin(kinds).count("1") > 1:
        return TransferStatus.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    resolving = bool(kinds & _RESOLVING)
    if resolving and transfer.pending_id is None:
        return TransferStatus.PENDING_ID_MUST_BE_SET
    if not resolving and transfer.pending_id is not None:
        return TransferStatus.PENDING_ID_MUST_NOT_BE_SET
    if transfer.timeout_s and not kinds & FLAG_PENDING:
        return TransferStatus.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if resolving:
        return _check_resolution(transfer, debit, credit, pending, pending_state)
    if transfer.amount <= 0:
        return TransferStatus.AMOUNT_MUST_BE_POSITIVE
    return _check_accounts(transfer, debit, credit, transfer.amount)


def _check_resolution(
    transfer: Transfer,
    debit: Account | None,
    credit: Account | None,
    pending: Transfer | None,
    state: PendingState | None,
) -> TransferStatus:
    if transfer.amount < 0:
        return TransferStatus.AMOUNT_MUST_BE_POSITIVE
    if pending is None:
        return TransferStatus.PENDING_TRANSFER_NOT_FOUND
    if not int(pending.flags) & FLAG_PENDING:
        return TransferStatus.PENDING_TRANSFER_NOT_PENDING
    if state is PendingState.POSTED:
        return TransferStatus.PENDING_TRANSFER_ALREADY_POSTED
    if state is PendingState.VOIDED:
        return TransferStatus.PENDING_TRANSFER_ALREADY_VOIDED
    if state is PendingState.EXPIRED:
        return TransferStatus.PENDING_TRANSFER_EXPIRED
    if transfer.amount > pending.amount:
        return TransferStatus.EXCEEDS_PENDING_TRANSFER_AMOUNT
    if (transfer.debit_account_id, transfer.credit_account_id) != (
        pending.debit_account_id,
        pending.credit_account_id,
    ):
        return TransferStatus.PENDING_TRANSFER_HAS_DIFFERENT_ACCOUNTS
    status = _check_accounts(transfer, debit, credit, 0)
    return status  # releasing or posting at most the held amount cannot break a limit


def _check_accounts(
    transfer: Transfer, debit: Account | None, credit: Account | None, amount: int
) -> TransferStatus:
    if transfer.debit_account_id == transfer.credit_account_id:
        return TransferStatus.ACCOUNTS_MUST_BE_DIFFERENT
    if debit is None:
        return TransferStatus.DEBIT_ACCOUNT_NOT_FOUND
    if credit is None:
        return TransferStatus.CREDIT_ACCOUNT_NOT_FOUND
    if not (debit.ledger == credit.ledger == transfer.ledger):
        return TransferStatus.LEDGERS_MUST_BE_EQUAL
    debits = debit.debits_posted + debit.debits_pending + amount
    if int(debit.flags) & _DEBITS_LIMITED and debits > debit.credits_posted:
        return TransferStatus.EXCEEDS_CREDITS
    credits = credit.credits_posted + credit.credits_pending + amount
    if int(credit.flags) & _CREDITS_LIMITED and credits > credit.debits_posted:
        return TransferStatus.EXCEEDS_DEBITS
    return TransferStatus.CREATED


def apply_transfer(
    debit: Account, credit: Account, transfer: Transfer, pending: Transfer | None = None
) -> tuple[Account, Account]:
    """The two accounts after ``transfer`` (which :func:`check_transfer` has accepted)."""
    flags = int(transfer.flags)
    if flags & FLAG_PENDING:
        return (
            _moved(debit, debits_pending=transfer.amount),
            _moved(credit, credits_pending=transfer.amount),
        )
    if flags & _RESOLVING:
        assert pending is not None, "a post or void needs its pending transfer"
        posted = posted_amount(transfer, pending)
        return (
            _moved(debit, debits_pending=-pending.amount, debits_posted=posted),
            _moved(credit, credits_pending=-pending.amount, credits_posted=posted),
        )
    return (
        _moved(debit, debits_posted=transfer.amount),
        _moved(credit, credits_posted=transfer.amount),
    )


def _moved(
    account: Account,
    *,
    debits_pending: int = 0,
    debits_posted: int = 0,
    credits_pending: int = 0,
    credits_posted: int = 0,
) -> Account:
    """``account`` with these amounts added to its totals (built directly rather than with
    ``dataclasses.replace``, which costs twice as much and runs for every transfer)."""
    return Account(
        account.id,
        account.code,
        account.ledger,
        account.flags,
        account.debits_pending + debits_pending,
        account.debits_posted + debits_posted,
        account.credits_pending + credits_pending,
        account.credits_posted + credits_posted,
    )


def posted_amount(transfer: Transfer, pending: Transfer) -> int:
    """What a post or void moves to the posted totals (a void: nothing; a post of 0: all)."""
    if int(transfer.flags) & FLAG_VOID_PENDING:
        return 0
    return transfer.amount or pending.amount
