"""Discount rules as data, evaluated by pure functions.

A rule applies to a payment when the merchant matches it (by chain, merchant id or MCC; a rule
naming none of them matches every merchant), the business date is inside its validity window,
and the member has not yet used it ``uses_max`` times in the current period. Its discount is a
percentage of the amount (rounded down to whole rials) or a fixed amount, never more than the
cap per payment nor the amount itself. At most one rule applies: the one giving the largest
discount (ties: the rule whose code sorts first, so the choice is deterministic).

>>> from datetime import date
>>> hotel = DiscountRule(code="HOTEL20", chains=frozenset({"ITTO"}), percent=20,
...                      cap_amount=5_000_000, uses_max=4, uses_period="month",
...                      funded_by="merchant", valid_from=date(2026, 1, 1),
...                      valid_to=date(2027, 12, 31))
>>> hotel.discount_on(10_000_000), hotel.discount_on(32_000_000)
(2000000, 5000000)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

FUNDED_BY_MERCHANT = "merchant"
PERIODS = ("", "day", "month", "year")


class RuleError(ValueError):
    """A discount rule that cannot be used, with the rule code and the reason."""


@dataclass(frozen=True, slots=True)
class DiscountRule:
    """One discount rule (amounts in minor units; percent in whole percent)."""

    code: str
    funded_by: str  # "merchant" or a program code
    valid_from: date
    valid_to: date
    chains: frozenset[str] = frozenset()
    merchant_ids: frozenset[str] = frozenset()
    mccs: frozenset[str] = frozenset()
    percent: int = 0
    fixed_amount: int = 0
    cap_amount: int = 0  # 0: no cap
    uses_max: int = 0  # 0: unlimited
    uses_period: str = ""  # "", "day", "month", "year"

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise RuleError(f"rule {self.code}: percent must be 0-100, got {self.percent}")
        if (self.percent > 0) == (self.fixed_amount > 0):
            raise RuleError(f"rule {self.code}: give either percent or fixed_amount")
        if min(self.fixed_amount, self.cap_amount, self.uses_max) < 0:
            raise RuleError(f"rule {self.code}: amounts and uses must not be negative")
        if self.uses_period not in PERIODS:
            raise RuleError(f"rule {self.code}: uses_period must be one of {PERIODS}")
        if self.uses_max and not self.uses_period:
            raise RuleError(f"rule {self.code}: uses_max needs a uses_period")
        if self.valid_to < self.valid_from:
            raise RuleError(f"rule {self.code}: valid_to is before valid_from")

    @property
    def merchant_funded(self) -> bool:
        """True when the merchant bears the discount (it is paid less)."""
        return self.funded_by == FUNDED_BY_MERCHANT

    def matches(self, *, merchant_id: str, chain: str, mcc: str) -> bool:
        """True when the rule covers this merchant."""
        if not (self.chains or self.merchant_ids or self.mccs):
            return True
        return (
            (chain != "" and chain in self.chains)
            or merchant_id in self.merchant_ids
            or mcc in self.mccs
        )

    def valid_on(self, today: date) -> bool:
        """True inside the validity window (both ends included)."""
        return self.valid_from <= today <= self.valid_to

    def discount_on(self, amount: int) -> int:
        """The discount this rule gives on ``amount`` (before the uses limit)."""
        # Percentages round down to whole rials.
        value = amount * self.percent // 100 if self.percent else self.fixed_amount
        if self.cap_amount:
            value = min(value, self.cap_amount)
        return max(0, min(value, amount))


@dataclass(frozen=True, slots=True)
class Discount:
    """The rule applied to a payment and the amount it gives."""

    rule: DiscountRule
    amount: int


def period_start(period: str, today: date) -> date:
    """First day of the period ``today`` is in (``""``: the beginning of time)."""
    if period == "day":
        return today
    if period == "month":
        return today.replace(day=1)
    if period == "year":
        return today.replace(month=1, day=1)
    return date.min


def best_discount(
    rules: Iterable[DiscountRule],
    *,
    merchant_id: str,
    chain: str,
    mcc: str,
    amount: int,
    today: date,
    uses_of: Callable[[DiscountRule, date], int],
) -> Discount | None:
    """The discount giving the most on this payment, or None.

    ``uses_of(rule, since)`` tells how many times the member has used ``rule`` since a date;
    it is only asked for rules that limit uses.
    """
    best: Discount | None = None
    for rule in sorted(rules, key=lambda r: r.code):
        if not (
            rule.valid_on(today) and rule.matches(merchant_id=merchant_id, chain=chain, mcc=mcc)
        ):
            continue
        value = rule.discount_on(amount)
        if value <= 0 or (best is not None and value <= best.amount):
            continue
        if rule.uses_max and uses_of(rule, period_start(rule.uses_period, today)) >= rule.uses_max:
            continue
        best = Discount(rule, value)
    return best
