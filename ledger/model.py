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
    """How a transfer behaves (two-phase transfers arrive with the ledger issue)."""

    NONE = 0
    PENDING = 1


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
    EXISTS = "exists"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    LEDGERS_MUST_BE_EQUAL = "ledgers_must_be_equal"
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


def check_transfer(
    transfer: Transfer,
    debit: Account | None,
    credit: Account | None,
    existing: Transfer | None = None,
) -> TransferStatus:
    """Decide, without side effects, whether ``transfer`` may be applied.

    >>> a = Account(1, "purse", 364, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS, credits_posted=5)
    >>> b = Account(2, "merchant", 364, AccountFlags.NONE)
    >>> check_transfer(Transfer("t1", 1, 2, 6, 364, TransferCode.PURCHASE), a, b)
    <TransferStatus.EXCEEDS_CREDITS: 'exceeds_credits'>
    """
    if existing is not None:
        same = replace(existing, id=transfer.id) == transfer
        return TransferStatus.EXISTS if same else TransferStatus.EXISTS_WITH_DIFFERENT_FIELDS
    if transfer.amount <= 0:
        return TransferStatus.AMOUNT_MUST_BE_POSITIVE
    if transfer.debit_account_id == transfer.credit_account_id:
        return TransferStatus.ACCOUNTS_MUST_BE_DIFFERENT
    if debit is None:
        return TransferStatus.DEBIT_ACCOUNT_NOT_FOUND
    if credit is None:
        return TransferStatus.CREDIT_ACCOUNT_NOT_FOUND
    if not (debit.ledger == credit.ledger == transfer.ledger):
        return TransferStatus.LEDGERS_MUST_BE_EQUAL
    if debit.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
        debits = debit.debits_posted + debit.debits_pending + transfer.amount
        if debits > debit.credits_posted:
            return TransferStatus.EXCEEDS_CREDITS
    if credit.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
        credits = credit.credits_posted + credit.credits_pending + transfer.amount
        if credits > credit.debits_posted:
            return TransferStatus.EXCEEDS_DEBITS
    return TransferStatus.CREATED


def apply_transfer(debit: Account, credit: Account, transfer: Transfer) -> tuple[Account, Account]:
    """The two accounts after ``transfer`` (which :func:`check_transfer` has accepted)."""
    if transfer.flags & TransferFlags.PENDING:
        return (
            replace(debit, debits_pending=debit.debits_pending + transfer.amount),
            replace(credit, credits_pending=credit.credits_pending + transfer.amount),
        )
    return (
        replace(debit, debits_posted=debit.debits_posted + transfer.amount),
        replace(credit, credits_posted=credit.credits_posted + transfer.amount),
    )
