"""Authorization rules: pure functions of the request, the card snapshot, the PIN result.

Rules (guards run in this precedence order; the first that fails is the answer):

====  ===========================================  ==========================================
code  guard                                        note
====  ===========================================  ==========================================
14    card unknown                                 no card with this PAN
62    card blocked                                 state other than active
54    card expired, or expiry presented differs    valid through the end of month YYMM
75    PIN tries exhausted                          until an operator resets the counter
55    PIN missing, invalid or wrong                a wrong PIN counts; the last allowed one -> 75
====  ===========================================  ==========================================

The flows (:mod:`switch.flows`) add their own guards after these: amount and limits (13, 61,
65), the purse waterfall (57, 51), originals (25), tolerance (13).

A right PIN resets the failure counter. A decline is a value, never an exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date

from ledger.domain import CardSnapshot, Purse
from switch.requests import FinancialRequest

CURRENCY = "364"
FIELD54_BLOCKS_MAX = 6  # field 54 holds at most 120 characters: six 20-character blocks


class PinResult(enum.Enum):
    """What the HSM said about the PIN block (computed before the decision)."""

    OK = "ok"
    MISMATCH = "mismatch"
    INVALID_BLOCK = "invalid_block"
    MISSING = "missing"


@dataclass(frozen=True)
class CardVerdict:
    """Outcome of the card guards: a decline code or None, and the new PIN failure count."""

    response_code: str | None
    pin_failures: int | None


def card_expired(expiry: str, today: date) -> bool:
    """True when a card with expiry ``YYMM`` is past the end of that month on ``today``.

    >>> card_expired("2401", date(2024, 1, 31)), card_expired("2401", date(2024, 2, 1))
    (False, True)
    """
    year, month = 2000 + int(expiry[:2]), int(expiry[2:])
    return (today.year, today.month) > (year, month)


def check_card(
    request: FinancialRequest, snapshot: CardSnapshot | None, pin: PinResult, today: date
) -> CardVerdict:
    """The card guards shared by every PIN-verified flow (14, 62, 54, 75, 55)."""
    if snapshot is None:
        return CardVerdict("14", None)
    card = snapshot.card
    if card.state != "active":
        return CardVerdict("62", None)
    presented = None if request.card is None else request.card.expiry
    if card_expired(card.expiry, today) or (presented is not None and presented != card.expiry):
        return CardVerdict("54", None)
    if card.pin_failures >= card.pin_tries_max:
        return CardVerdict("75", None)
    if pin is PinResult.MISSING:
        return CardVerdict("55", None)
    if pin is not PinResult.OK:
        failures = card.pin_failures + 1
        return CardVerdict("75" if failures >= card.pin_tries_max else "55", failures)
    return CardVerdict(None, 0 if card.pin_failures else None)


def amount_block(account_type: str, amount_type: str, amount: int, sign: str = "C") -> str:
    """One 20-character field 54 block (account type, amount type, currency, sign, amount)."""
    assert 0 <= amount < 10**12, "amount does not fit 12 digits"
    return f"{account_type}{amount_type}{CURRENCY}{sign}{amount:012d}"


def purse_usable(purse: Purse, today: date) -> bool:
    """True while a purse may still pay (not past its expiry date)."""
    return purse.expires is None or purse.expires >= today.isoformat()


def purse_accepts(purse: Purse, *, merchant_id: str, chain: str, mcc: str) -> bool:
    """True when a purse may pay at this merchant (a general purse pays anywhere)."""
    if purse.general:
        return True
    return (
        (chain != "" and chain in purse.chains)
        or merchant_id in purse.merchant_ids
        or mcc in purse.mccs
    )


def payable_purses(
    snapshot: CardSnapshot, *, merchant_id: str, chain: str, mcc: str, today: date
) -> list[Purse]:
    """The waterfall: restricted purses accepting the merchant, the one expiring first first,
    then the general purse."""
    usable = [
        p
        for p in snapshot.purses
        if purse_usable(p, today)
        and purse_accepts(p, merchant_id=merchant_id, chain=chain, mcc=mcc)
    ]
    restricted = sorted(
        (p for p in usable if not p.general), key=lambda p: (p.expires or "", p.code)
    )
    return restricted + [p for p in usable if p.general]


def draw(
    purses: list[Purse], amount: int, released: dict[int, int] | None = None
) -> list[tuple[Purse, int]] | None:
    """Split ``amount`` over the purses in order; None when they do not hold enough.

    ``released`` adds back, per purse account id, an amount about to be released (a hold that
    the same decision voids).
    """
    released = released or {}
    parts: list[tuple[Purse, int]] = []
    left = amount
    for purse in purses:
        if left == 0:
            break
        available = purse.account.available_credit + released.get(purse.account.id, 0)
        take = min(available, left)
        if take > 0:
            parts.append((purse, take))
            left -= take
    return parts if left == 0 else None


def purses_text(parts: list[tuple[str, int]]) -> str:
    """Purses used as in the settlement files: ``GN:800000;TR:200000``."""
    return ";".join(f"{code}:{amount}" for code, amount in parts)


def balance_blocks(snapshot: CardSnapshot, today: date) -> str:
    """Field 54 for a balance inquiry: all purses' ledger and available balance, then each
    purse that may still pay (general first), as many as fit."""
    usable = [p for p in snapshot.purses if purse_usable(p, today)]
    usable.sort(key=lambda p: (not p.general, p.code))
    ledger_total = sum(p.account.balance_credit for p in snapshot.purses)
    available_total = sum(p.account.available_credit for p in usable)
    blocks = [amount_block("00", "01", ledger_total), amount_block("00", "02", available_total)]
    for purse in usable[: FIELD54_BLOCKS_MAX - len(blocks)]:
        blocks.append(amount_block(purse.code, "02", purse.account.available_credit))
    return "".join(blocks)
