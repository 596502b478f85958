"""The pure ledger model: check_transfer's status precedence, apply_transfer, account balances."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ledger.model import (
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

IRR = 364
OTHER_LEDGER = 978
GUARDED = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CAPPED = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
NONE = AccountFlags.NONE

PURSE = Account(1, "purse:M0001:GN", IRR, GUARDED, credits_posted=1_000)
MERCHANT = Account(2, "merchant:HNR000000000001:payable", IRR, NONE)
T = Transfer("t1", 1, 2, 100, IRR, TransferCode.PURCHASE)


def _account(id_: int, ledger: int = IRR, flags: AccountFlags = NONE, **totals: int) -> Account:
    return Account(id_, f"account:{id_}", ledger, flags, **totals)


S = TransferStatus

# Named fixtures for the table below: debit candidates are id 1, credit candidates id 2.
ACCOUNTS: dict[str, Account | None] = {
    "-": None,
    "purse": PURSE,
    "purse_held": replace(PURSE, debits_pending=400),
    "purse_spent_held": replace(PURSE, debits_posted=500, debits_pending=400),
    "purse_pending_in": replace(PURSE, credits_pending=5_000),
    "purse_eur": replace(PURSE, ledger=OTHER_LEDGER),
    "unguarded": _account(1),
    "merchant": MERCHANT,
    "merchant_eur": replace(MERCHANT, ledger=OTHER_LEDGER),
    "capped_0": _account(2, flags=CAPPED),
    "capped_99": _account(2, flags=CAPPED, debits_posted=99),
    "capped_100": _account(2, flags=CAPPED, debits_posted=100),
    "capped_100_in": _account(2, flags=CAPPED, debits_posted=100, credits_pending=1),
}
TRANSFERS: dict[str, Transfer | None] = {
    "-": None,
    "t": T,
    "t_0": replace(T, amount=0),
    "t_-5": replace(T, amount=-5),
    "t_600": replace(T, amount=600),
    "t_601": replace(T, amount=601),
    "t_101": replace(T, amount=101),
    "t_1000": replace(T, amount=1_000),
    "t_1001": replace(T, amount=1_001),
    "t_huge": replace(T, amount=10**9),
    "t_self": replace(T, credit_account_id=1),
    "t_self_0": replace(T, credit_account_id=1, amount=0),
    "t_eur": replace(T, ledger=OTHER_LEDGER),
    "t_refund": replace(T, code=TransferCode.REFUND),
    "t_held": replace(T, flags=TransferFlags.PENDING),
    "t_to_3": replace(T, credit_account_id=3),
    "t_note": replace(T, user_data="note"),
}

# One row per case: the status expected, the transfer, its debit and credit accounts as found,
# and the transfer already stored under the same id. Rows with several faults check that the
# fault earliest in precedence order wins.
# fmt: off
PRECEDENCE_ROWS = [
    # expected                         transfer    debit               credit           existing
    (S.EXISTS,                         "t",        "purse",            "merchant",      "t"),
    (S.EXISTS,                         "t_0",      "-",                "-",             "t_0"),
    (S.EXISTS_WITH_DIFFERENT_FIELDS,   "t",        "purse",            "merchant",      "t_101"),
    (S.EXISTS_WITH_DIFFERENT_FIELDS,   "t",        "purse",            "merchant",      "t_refund"),
    (S.EXISTS_WITH_DIFFERENT_FIELDS,   "t",        "purse",            "merchant",      "t_held"),
    (S.EXISTS_WITH_DIFFERENT_FIELDS,   "t",        "purse",            "merchant",      "t_to_3"),
    (S.EXISTS_WITH_DIFFERENT_FIELDS,   "t",        "purse",            "merchant",      "t_note"),
    (S.EXISTS_WITH_DIFFERENT_FIELDS,   "t_0",      "-",                "-",             "t"),
    (S.AMOUNT_MUST_BE_POSITIVE,        "t_0",      "purse",            "merchant",      "-"),
    (S.AMOUNT_MUST_BE_POSITIVE,        "t_-5",     "purse",            "merchant",      "-"),
    (S.AMOUNT_MUST_BE_POSITIVE,        "t_self_0", "-",                "-",             "-"),
    (S.ACCOUNTS_MUST_BE_DIFFERENT,     "t_self",   "purse",            "purse",         "-"),
    (S.ACCOUNTS_MUST_BE_DIFFERENT,     "t_self",   "-",                "-",             "-"),
    (S.DEBIT_ACCOUNT_NOT_FOUND,        "t",        "-",                "merchant",      "-"),
    (S.DEBIT_ACCOUNT_NOT_FOUND,        "t",        "-",                "-",             "-"),
    (S.CREDIT_ACCOUNT_NOT_FOUND,       "t",        "purse",            "-",             "-"),
    (S.CREDIT_ACCOUNT_NOT_FOUND,       "t_huge",   "purse",            "-",             "-"),
    (S.LEDGERS_MUST_BE_EQUAL,          "t",        "purse_eur",        "merchant",      "-"),
    (S.LEDGERS_MUST_BE_EQUAL,          "t",        "purse",            "merchant_eur",  "-"),
    (S.LEDGERS_MUST_BE_EQUAL,          "t_eur",    "purse",            "merchant",      "-"),
    (S.LEDGERS_MUST_BE_EQUAL,          "t_huge",   "purse_eur",        "merchant",      "-"),
    (S.EXCEEDS_CREDITS,                "t_1001",   "purse",            "merchant",      "-"),
    (S.CREATED,                        "t_1000",   "purse",            "merchant",      "-"),
    (S.EXCEEDS_CREDITS,                "t_601",    "purse_held",       "merchant",      "-"),
    (S.CREATED,                        "t_600",    "purse_held",       "merchant",      "-"),
    (S.EXCEEDS_CREDITS,                "t_101",    "purse_spent_held", "merchant",      "-"),
    (S.CREATED,                        "t",        "purse_spent_held", "merchant",      "-"),
    (S.EXCEEDS_CREDITS,                "t_1001",   "purse_pending_in", "merchant",      "-"),
    (S.CREATED,                        "t_huge",   "unguarded",        "merchant",      "-"),
    (S.EXCEEDS_CREDITS,                "t_1001",   "purse",            "capped_0",      "-"),
    (S.EXCEEDS_DEBITS,                 "t",        "purse",            "capped_99",     "-"),
    (S.EXCEEDS_DEBITS,                 "t",        "purse",            "capped_100_in", "-"),
    (S.EXCEEDS_DEBITS,                 "t",        "unguarded",        "capped_0",      "-"),
    (S.CREATED,                        "t",        "purse",            "capped_100",    "-"),
    (S.CREATED,                        "t",        "purse",            "merchant",      "-"),
]
# fmt: on


@pytest.mark.parametrize(
    ("expected", "transfer", "debit", "credit", "existing"),
    PRECEDENCE_ROWS,
    ids=[f"{r[0].value}:{r[1]}:{r[2]}:{r[3]}:{r[4]}" for r in PRECEDENCE_ROWS],
)
def test_check_transfer_precedence(
    expected: TransferStatus, transfer: str, debit: str, credit: str, existing: str
) -> None:
    candidate = TRANSFERS[transfer]
    assert candidate is not None
    status = check_transfer(candidate, ACCOUNTS[debit], ACCOUNTS[credit], TRANSFERS[existing])
    assert status is expected


HOLD = replace(T, id="h1", flags=TransferFlags.PENDING, amount=300, timeout_s=60)
POST = Transfer(
    "p1", 1, 2, 0, IRR, TransferCode.PURCHASE, flags=TransferFlags.POST_PENDING, pending_id="h1"
)
VOID = replace(POST, id="v1", flags=TransferFlags.VOID_PENDING)
P = PendingState
HELD = replace(PURSE, debits_pending=300)
HELD_MERCHANT = replace(MERCHANT, credits_pending=300)

# Two-phase rows: expected, transfer, pending transfer found, its state.
# fmt: off
TWO_PHASE_ROWS = [
    (S.FLAGS_ARE_MUTUALLY_EXCLUSIVE,            replace(POST, flags=TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING), HOLD, P.PENDING),  # noqa: E501
    (S.FLAGS_ARE_MUTUALLY_EXCLUSIVE,            replace(HOLD, flags=TransferFlags.PENDING | TransferFlags.POST_PENDING), None, None),  # noqa: E501
    (S.PENDING_ID_MUST_BE_SET,                  replace(POST, pending_id=None), HOLD, P.PENDING),
    (S.PENDING_ID_MUST_NOT_BE_SET,              replace(HOLD, pending_id="x"), None, None),
    (S.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,   replace(T, timeout_s=5), None, None),
    (S.AMOUNT_MUST_BE_POSITIVE,                 replace(POST, amount=-1), HOLD, P.PENDING),
    (S.PENDING_TRANSFER_NOT_FOUND,              POST, None, None),
    (S.PENDING_TRANSFER_NOT_PENDING,            POST, T, None),
    (S.PENDING_TRANSFER_ALREADY_POSTED,         POST, HOLD, P.POSTED),
    (S.PENDING_TRANSFER_ALREADY_VOIDED,         VOID, HOLD, P.VOIDED),
    (S.PENDING_TRANSFER_EXPIRED,                POST, HOLD, P.EXPIRED),
    (S.EXCEEDS_PENDING_TRANSFER_AMOUNT,         replace(POST, amount=301), HOLD, P.PENDING),
    (S.PENDING_TRANSFER_HAS_DIFFERENT_ACCOUNTS, replace(POST, credit_account_id=3), HOLD, P.PENDING),  # noqa: E501
    (S.CREATED,                                 POST, HOLD, P.PENDING),
    (S.CREATED,                                 replace(POST, amount=300), HOLD, P.PENDING),
    (S.CREATED,                                 VOID, HOLD, P.PENDING),
]
# fmt: on


@pytest.mark.parametrize(("expected", "transfer", "pending", "state"), TWO_PHASE_ROWS)
def test_check_transfer_two_phase(
    expected: TransferStatus,
    transfer: Transfer,
    pending: Transfer | None,
    state: PendingState | None,
) -> None:
    assert check_transfer(transfer, HELD, HELD_MERCHANT, None, pending, state) is expected


def test_post_and_void_move_pending_to_posted() -> None:
    debit, credit = apply_transfer(HELD, HELD_MERCHANT, replace(POST, amount=200), HOLD)
    assert (debit.debits_pending, debit.debits_posted) == (0, 200)
    assert (credit.credits_pending, credit.credits_posted) == (0, 200)
    debit, credit = apply_transfer(HELD, HELD_MERCHANT, POST, HOLD)
    assert debit.debits_posted == 300, "a post of 0 posts the whole hold"
    debit, credit = apply_transfer(HELD, HELD_MERCHANT, VOID, HOLD)
    assert (debit.debits_pending, debit.debits_posted, credit.credits_posted) == (0, 0, 0)


# Statuses only create_transfers gives (linked chains); tests/ledger/test_ledger_store.py.
CHAIN_STATUSES = {S.LINKED_EVENT_FAILED, S.LINKED_EVENT_CHAIN_OPEN}


def test_precedence_rows_cover_every_status() -> None:
    covered = {row[0] for row in PRECEDENCE_ROWS} | {row[0] for row in TWO_PHASE_ROWS}
    assert covered | CHAIN_STATUSES == set(TransferStatus)


def test_check_transfer_has_no_side_effects() -> None:
    before = (PURSE, MERCHANT, T)
    check_transfer(replace(T, amount=5_000), PURSE, MERCHANT)
    check_transfer(T, PURSE, MERCHANT)
    assert before == (PURSE, MERCHANT, T)


def test_apply_posted_transfer_moves_posted_totals() -> None:
    debit, credit = apply_transfer(PURSE, MERCHANT, T)
    assert (debit.debits_posted, debit.debits_pending) == (100, 0)
    assert (credit.credits_posted, credit.credits_pending) == (100, 0)
    assert debit.credits_posted == 1_000 and credit.debits_posted == 0
    assert debit.balance_credit == 900 and debit.available_credit == 900
    assert credit.balance_credit == 100
    # The inputs are immutable values and stay as they were.
    assert PURSE.debits_posted == 0 and MERCHANT.credits_posted == 0


def test_apply_pending_transfer_moves_pending_totals_only() -> None:
    pending = replace(T, flags=TransferFlags.PENDING)
    debit, credit = apply_transfer(PURSE, MERCHANT, pending)
    assert (debit.debits_posted, debit.debits_pending) == (0, 100)
    assert (credit.credits_posted, credit.credits_pending) == (0, 100)
    # A hold leaves the posted balance alone but reduces what may still be spent.
    assert debit.balance_credit == 1_000
    assert debit.available_credit == 900
    assert credit.balance_credit == 0


def test_apply_keeps_debits_equal_to_credits() -> None:
    accounts = {1: PURSE, 2: MERCHANT, 3: _account(3)}
    moves = [
        (1, 2, 300, TransferFlags.NONE),
        (3, 1, 50, TransferFlags.NONE),
        (1, 3, 200, TransferFlags.PENDING),
        (2, 3, 100, TransferFlags.NONE),
    ]
    for index, (debit_id, credit_id, amount, flags) in enumerate(moves):
        transfer = Transfer(
            f"t{index}", debit_id, credit_id, amount, IRR, TransferCode.PURCHASE, flags
        )
        assert check_transfer(transfer, accounts[debit_id], accounts[credit_id]) is S.CREATED
        accounts[debit_id], accounts[credit_id] = apply_transfer(
            accounts[debit_id], accounts[credit_id], transfer
        )
    values = accounts.values()
    seeded = PURSE.credits_posted  # credits that came from outside this journal
    assert sum(a.debits_posted for a in values) == sum(a.credits_posted for a in values) - seeded
    assert sum(a.debits_posted for a in values) == 450
    assert sum(a.debits_pending for a in values) == sum(a.credits_pending for a in values) == 200
    assert accounts[1].balance_credit == 1_000 + 50 - 300
    assert accounts[1].available_credit == 1_000 + 50 - 300 - 200


@pytest.mark.parametrize(
    ("totals", "balance", "available"),
    [
        ({}, 0, 0),
        ({"credits_posted": 700}, 700, 700),
        ({"credits_posted": 700, "debits_posted": 200}, 500, 500),
        ({"credits_posted": 700, "debits_posted": 200, "debits_pending": 150}, 500, 350),
        ({"credits_posted": 700, "credits_pending": 900}, 700, 700),
        ({"debits_posted": 40}, -40, -40),
    ],
)
def test_account_balance_credit_and_available_credit(
    totals: dict[str, int], balance: int, available: int
) -> None:
    account = _account(9, **totals)
    assert account.balance_credit == balance
    assert account.available_credit == available


def test_a_pending_hold_is_expired_from_its_timeout_on() -> None:
    at = "2026-12-04T10:00:00+00:00"
    before, after = "2026-12-04T09:59:59+00:00", "2026-12-04T10:00:01+00:00"
    assert effective_pending_state(PendingState.PENDING, at, before) is PendingState.PENDING
    assert effective_pending_state(PendingState.PENDING, at, at) is PendingState.EXPIRED
    assert effective_pending_state(PendingState.PENDING, at, after) is PendingState.EXPIRED
    assert effective_pending_state(PendingState.PENDING, None, after) is PendingState.PENDING
    # A resolved hold keeps its state whatever the clock says.
    for state in (PendingState.POSTED, PendingState.VOIDED, PendingState.EXPIRED):
        assert effective_pending_state(state, at, after) is state
