"""Synthetic members for load and scale tests (spec/demo-data.md).

Member ``i`` (from 1) is ``S`` + ``i`` as 8 digits, with PAN ``6362149`` + ``i`` as 8 digits + Luhn
check digit, expiry 2812, service code 101, PIN = the last 4 digits of ``i``, state active, the
load limits (daily amount 10,000,000,000, daily count 1,000,000) and a GN purse of 100,000,000
IRR disbursed from FUND-GEN by ordinary DISBURSEMENT transfers (one bulk batch).

Creating them is idempotent: members that exist already are skipped, and the balance of each new
range comes from its own batch ``synthetic-<first>-<last>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from ledger.demo import LIMITS_LOAD
from ledger.issuance import IssuanceError, IssuingHsm, luhn_digit, new_card
from ledger.store import DisbursementBatch, NewCard, Store

SYNTHETIC_MEMBERS_MAX = 1_000_000
SYNTHETIC_EXPIRY = "2812"
SYNTHETIC_AMOUNT = 100_000_000
SYNTHETIC_PROGRAM = "FUND-GEN"
SYNTHETIC_PURSE = "GN"


def synthetic_member_id(i: int) -> str:
    """Member id of synthetic member ``i``.

    >>> synthetic_member_id(42)
    'S00000042'
    """
    return f"S{i:08d}"


def synthetic_pan(i: int) -> str:
    """PAN of synthetic member ``i``.

    >>> synthetic_pan(1)
    '6362149000000012'
    """
    assert 1 <= i <= 99_999_999, i
    body = f"6362149{i:08d}"
    return body + luhn_digit(body)


def synthetic_pin(i: int) -> str:
    """PIN of synthetic member ``i``: its last four digits.

    >>> synthetic_pin(123_456)
    '3456'
    """
    return f"{i % 10_000:04d}"


@dataclass(frozen=True)
class SyntheticResult:
    """What ``create_synthetic_members`` did."""

    created: int
    existing: int
    batch_id: str  # "" when nothing was created


def build_synthetic_cards(hsm: IssuingHsm, pvk: str, numbers: range) -> list[NewCard]:
    """The stored cards of synthetic members ``numbers`` (a tight loop over the HSM calls)."""
    return [
        new_card(
            hsm,
            pvk,
            synthetic_member_id(i),
            synthetic_pan(i),
            synthetic_pin(i),
            SYNTHETIC_EXPIRY,
            limits=LIMITS_LOAD,
        )
        for i in numbers
    ]


def create_synthetic_members(
    store: Store,
    hsm: IssuingHsm,
    count: int,
    *,
    business_date: str,
    now: str,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticResult:
    """Make sure synthetic members 1..``count`` exist, with cards and funded GN purses."""
    if not 1 <= count <= SYNTHETIC_MEMBERS_MAX:
        raise IssuanceError(f"--members: 1-{SYNTHETIC_MEMBERS_MAX:,}, got {count:,}")
    pvk = store.setting("pvk")
    if pvk is None:
        raise IssuanceError("the ledger has no issuer PVK (setting 'pvk'); load the demo data")
    existing = store.member_ids([synthetic_member_id(i) for i in range(1, count + 1)])
    missing = [i for i in range(1, count + 1) if synthetic_member_id(i) not in existing]
    if not missing:
        return SyntheticResult(0, len(existing), "")
    # Members are created in runs of consecutive numbers (normally one run: first..count).
    first, last = missing[0], missing[-1]
    if last - first + 1 != len(missing):
        raise IssuanceError(
            f"synthetic members {first}..{last} exist only in part; create them from 1 upwards"
        )
    numbers = range(first, last + 1)
    cards = build_synthetic_cards(hsm, pvk, numbers)
    members = [(synthetic_member_id(i), f"Synthetic member {i}") for i in numbers]
    batch_id = f"synthetic-{first}-{last}"
    batch = DisbursementBatch(
        batch_id=batch_id,
        program_code=SYNTHETIC_PROGRAM,
        purse_code=SYNTHETIC_PURSE,
        file_sha256=hashlib.sha256(f"{first}:{last}:{SYNTHETIC_AMOUNT}".encode()).hexdigest(),
        rows=[(member_id, SYNTHETIC_AMOUNT) for member_id, _name in members],
    )
    store.add_members_with_cards(
        members,
        cards,
        disbursement=batch,
        business_date=business_date,
        now=now,
        progress=None if progress is None else (lambda done: progress(done, len(members))),
    )
    return SyntheticResult(len(members), len(existing), batch_id)
