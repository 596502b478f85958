"""The authorization flows: one decision function per message kind.

Each ``decide_*`` function runs inside the ledger's database transaction (called by the group
committer) and reads only through the :class:`ledger.domain.LedgerView` it is given: the locked
card snapshot and earlier requests. It returns an :class:`ledger.domain.Outcome`: the response
code, the transfers to post (all or nothing), updates of earlier requests, response fields and
event fields. Nothing here does I/O of its own; the clock, the PIN result, the merchant and the
discount rules come in a :class:`FlowContext`.

Rules (what moves where):

===============  ==========================================================================
flow             postings
===============  ==========================================================================
purchase         each purse drawn -> merchant payable (the amount less the discount);
                 program-funded discount: program -> merchant payable
pre-auth         holds (pending transfers, timeout = hold period) purse -> merchant payable
completion       void the holds; then as a purchase of the final amount
refund           merchant payable -> the purses drawn (last drawn first); the program-funded
                 share of the discount goes back to the program
reversal         as a refund of the reversed amount (purchase, completion); voids (or
                 shrinks) the holds of a pre-auth; the inverse of a refund
===============  ==========================================================================

Refunds and reversals give back in proportion: of an amount ``x`` of an original of amount
``A`` that charged the card ``C``, the card gets ``x * C // A`` and the rest is discount.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

from ledger.domain import (
    LedgerView,
    Outcome,
    Posting,
    Purse,
    TransactionKey,
    TransactionRecord,
)
from ledger.model import TransferCode, TransferFlags
from merchants.directory import Merchant
from merchants.discounts import Discount, DiscountRule, best_discount
from switch.authorize import (
    PinResult,
    amount_block,
    balance_blocks,
    check_card,
    draw,
    payable_purses,
    purses_text,
)
from switch.requests import FinancialRequest, build_tlv

TOMBSTONED = "05"  # an original arriving after its own reversal is declined: do not honor
PURSE_BLOCKS_MAX = 3  # field 54 of a payment: 3 amount blocks + at most 3 purse balances


class StaleCard(Exception):  # not RuntimeError: mypyc cannot compile a subclass of it
    """The card's PIN data changed between PIN verification and the decision: verify again.

    Raised inside the ledger transaction, so the job leaves nothing behind."""


@dataclass(frozen=True)
class FlowContext:
    """Everything a decision needs besides the request and the ledger view."""

    today: date
    now: datetime
    pin: PinResult
    merchant: Merchant
    rules: tuple[DiscountRule, ...] = ()
    program_accounts: Mapping[str, int] | None = None
    hold_period_s: int = 7 * 24 * 3600
    completion_tolerance_percent: int = 15


def _key(request: FinancialRequest) -> TransactionKey:
    return TransactionKey(request.tid, request.stan, request.transmission)


def _original_key(request: FinancialRequest) -> TransactionKey | None:
    if request.original is None:
        return None
    return TransactionKey(request.tid, request.original.stan, request.original.transmission)


# --- purchase -------------------------------------------------------------------------------


def decide_purchase(request: FinancialRequest, view: LedgerView, ctx: FlowContext) -> Outcome:
    """A purchase (0200, 000000)."""
    decline, failures = _payment_guards(request, view, ctx)
    if decline is not None:
        return decline
    return _pay(view, ctx, amount=request.amount, released={}, pin_failures=failures)


def _payment_guards(
    request: FinancialRequest, view: LedgerView, ctx: FlowContext
) -> tuple[Outcome | None, int | None]:
    """The guards every new payment passes (tombstone, card, PIN, amount, daily limits):
    a decline, or None and the card's new PIN failure count."""
    if view.tombstoned(_key(request)):
        return Outcome(TOMBSTONED, amount=request.amount), None
    snapshot = view.snapshot
    verdict = check_card(request, snapshot, ctx.pin, ctx.today)
    failures = verdict.pin_failures
    if verdict.response_code is not None or snapshot is None:
        return Outcome(verdict.response_code or "14", pin_failures=failures), None
    amount, card = request.amount, snapshot.card
    if amount <= 0 or amount > card.payment_amount_max:
        return Outcome("13", pin_failures=failures, amount=amount), None
    limit = _limit_code(view, card.id, card.daily_amount_max, card.daily_count_max, amount, ctx)
    if limit is not None:
        return Outcome(limit, pin_failures=failures, amount=amount), None
    return None, failures


def _limit_code(
    view: LedgerView,
    card_id: int,
    amount_max: int,
    count_max: int,
    amount: int,
    ctx: FlowContext,
) -> str | None:
    spent, count = view.card_day_totals(card_id, ctx.today.isoformat())
    if count + 1 > count_max:
        return "65"
    if spent + amount > amount_max:
        return "61"
    return None


def _discount(view: LedgerView, ctx: FlowContext, member_id: str, amount: int) -> Discount | None:
    merchant = ctx.merchant
    return best_discount(
        ctx.rules,
        merchant_id=merchant.id,
        chain=merchant.chain,
        mcc=merchant.mcc,
        amount=amount,
        today=ctx.today,
        uses_of=lambda rule, since: view.rule_uses(member_id, rule.code, since.isoformat()),
    )


def _pay(
    view: LedgerView,
    ctx: FlowContext,
    *,
    amount: int,
    released: dict[int, int],
    pin_failures: int | None,
    before: Sequence[Posting] = (),
    record: Mapping[str, object] | None = None,
    updates: tuple[tuple[int, Mapping[str, object]], ...] = (),
) -> Outcome:
    """Discount, waterfall and postings of a payment of ``amount`` (purchase or completion)."""
    snapshot = view.snapshot
    assert snapshot is not None
    merchant = ctx.merchant
    purses = payable_purses(
        snapshot, merchant_id=merchant.id, chain=merchant.chain, mcc=merchant.mcc, today=ctx.today
    )
    if not purses:
        return Outcome("57", pin_failures=pin_failures, amount=amount)
    discount = _discount(view, ctx, snapshot.card.member_id, amount)
    discount_amount = discount.amount if discount else 0
    charged = amount - discount_amount
    parts = draw(purses, charged, released)
    if parts is None:
        return Outcome("51", pin_failures=pin_failures, amount=amount)
    postings = list(before)
    postings += [
        Posting(
            purse.account.id,
            merchant.payable_account_id,
            part,
            TransferCode.PURCHASE,
            user_data=f"purse {purse.code}",
        )
        for purse, part in parts
    ]
    funded_by = ""
    if discount is not None:
        funded_by = discount.rule.funded_by
        if not discount.rule.merchant_funded:
            program_account = (ctx.program_accounts or {}).get(funded_by)
            assert program_account is not None, f"rule {discount.rule.code}: no program {funded_by}"
            postings.append(
                Posting(
                    program_account,
                    merchant.payable_account_id,
                    discount_amount,
                    TransferCode.DISCOUNT_FUNDING,
                    user_data=f"discount {discount.rule.code}",
                )
            )
    used = purses_text([(purse.code, part) for purse, part in parts])
    tags = {"DSC": discount.rule.code} if discount else {}
    tags["PRS"] = ",".join(purse.code for purse, _ in parts)
    blocks = [
        amount_block("00", "90", amount, "D"),
        amount_block("00", "91", discount_amount),
        amount_block("00", "92", charged, "D"),
    ]
    for purse, part in parts[:PURSE_BLOCKS_MAX]:
        left = purse.account.available_credit + released.get(purse.account.id, 0) - part
        blocks.append(amount_block(purse.code, "02", left))
    fields = {48: build_tlv(tags), 54: "".join(blocks)}
    columns = {
        "discount": discount_amount,
        "discount_rule": discount.rule.code if discount else "",
        "discount_funded_by": funded_by,
        "amount_charged": charged,
        "purses_used": used,
        **dict(record or {}),
    }
    event = {
        "discount": discount_amount,
        "discount_rule": columns["discount_rule"],
        "discount_funded_by": funded_by,
        "amount_charged": charged,
        "purses_used": used,
    }
    return Outcome(
        "00",
        response_fields=fields,
        postings=tuple(postings),
        pin_failures=pin_failures,
        amount=amount,
        record=columns,
        updates=updates,
        event=event,
    )


# --- balance --------------------------------------------------------------------------------


def decide_balance(request: FinancialRequest, view: LedgerView, ctx: FlowContext) -> Outcome:
    """A balance inquiry (0200, 310000): balances in field 54."""
    snapshot = view.snapshot
    verdict = check_card(request, snapshot, ctx.pin, ctx.today)
    if verdict.response_code is not None or snapshot is None:
        return Outcome(verdict.response_code or "14", pin_failures=verdict.pin_failures)
    return Outcome(
        "00",
        response_fields={54: balance_blocks(snapshot, ctx.today)},
        pin_failures=verdict.pin_failures,
    )


# --- pre-authorization and completion -------------------------------------------------------


def decide_preauth(request: FinancialRequest, view: LedgerView, ctx: FlowContext) -> Outcome:
    """A pre-authorization (0100, 000000): holds the amount, charges nothing."""
    decline, failures = _payment_guards(request, view, ctx)
    if decline is not None:
        return decline
    snapshot = view.snapshot
    assert snapshot is not None
    amount = request.amount
    merchant = ctx.merchant
    purses = payable_purses(
        snapshot, merchant_id=merchant.id, chain=merchant.chain, mcc=merchant.mcc, today=ctx.today
    )
    if not purses:
        return Outcome("57", pin_failures=failures, amount=amount)
    parts = draw(purses, amount)
    if parts is None:
        return Outcome("51", pin_failures=failures, amount=amount)
    postings = _holds(parts, merchant.payable_account_id, ctx.hold_period_s)
    expires = (ctx.now + timedelta(seconds=ctx.hold_period_s)).isoformat()
    used = purses_text([(purse.code, part) for purse, part in parts])
    fields = {48: build_tlv({"PRS": ",".join(p.code for p, _ in parts)})}
    return Outcome(
        "00",
        response_fields=fields,
        postings=postings,
        pin_failures=failures,
        amount=amount,
        record={"hold_state": "pending", "hold_expires_at": expires, "purses_used": used},
        event={"hold_expires_at": expires, "purses_used": used},
    )


def _holds(
    parts: list[tuple[Purse, int]], merchant_account: int, hold_period_s: int
) -> tuple[Posting, ...]:
    return tuple(
        Posting(
            purse.account.id,
            merchant_account,
            part,
            TransferCode.PURCHASE,
            flags=TransferFlags.PENDING,
            timeout_s=hold_period_s,
            user_data=f"hold purse {purse.code}",
        )
        for purse, part in parts
    )


def live_holds(view: LedgerView, original: TransactionRecord) -> list[Posting]:
    """The pending holds of a pre-auth (its own and those a partial reversal re-placed)."""
    postings = list(view.postings_of(original.id))
    for child in view.children(original.id):
        postings += view.postings_of(child.id)
    resolved = {p.pending_id for p in postings if p.pending_id is not None}
    return [p for p in postings if p.flags & TransferFlags.PENDING and p.id not in resolved]


def _voids(holds: Sequence[Posting]) -> list[Posting]:
    return [
        Posting(
            h.debit_account_id,
            h.credit_account_id,
            0,
            TransferCode.PURCHASE,
            flags=TransferFlags.VOID_PENDING,
            pending_id=h.id,
            user_data="release hold",
        )
        for h in holds
    ]


def _hold_alive(original: TransactionRecord | None, ctx: FlowContext) -> bool:
    return (
        original is not None
        and original.kind == "preauth"
        and original.approved
        and original.hold_state == "pending"
        and (original.hold_expires_at is None or original.hold_expires_at > ctx.now.isoformat())
    )


def decide_completion(request: FinancialRequest, view: LedgerView, ctx: FlowContext) -> Outcome:
    """A completion (0220, 000000) of a pre-auth named by field 90."""
    if view.tombstoned(_key(request)):
        return Outcome(TOMBSTONED, amount=request.amount)
    key = _original_key(request)
    original = None if key is None else view.transaction_by_key(key)
    if original is None or not _hold_alive(original, ctx) or view.snapshot is None:
        return Outcome("25", amount=request.amount)
    held = original.amount - original.reversed_amount
    final = request.amount
    tolerance = 100 + ctx.completion_tolerance_percent
    if final <= 0 or final * 100 > held * tolerance:
        return Outcome("13", amount=final, record={"original_id": original.id})
    holds = live_holds(view, original)
    released: dict[int, int] = {}
    for hold in holds:
        released[hold.debit_account_id] = released.get(hold.debit_account_id, 0) + hold.amount
    outcome = _pay(
        view,
        ctx,
        amount=final,
        released=released,
        pin_failures=None,
        before=_voids(holds),
        record={"original_id": original.id},
        updates=((original.id, {"hold_state": "completed"}),),
    )
    if outcome.response_code != "00":
        return replace(outcome, record={"original_id": original.id})
    return replace(outcome, event={**dict(outcome.event or {}), "original_rrn": original.rrn})


# --- refund and reversal --------------------------------------------------------------------


def _draws(view: LedgerView, original: TransactionRecord) -> list[Posting]:
    return [
        p
        for p in view.postings_of(original.id)
        if p.code is TransferCode.PURCHASE and p.flags == TransferFlags.NONE
    ]


def _give_back(
    view: LedgerView,
    original: TransactionRecord,
    amount: int,
    code: TransferCode,
    ctx: FlowContext,
) -> tuple[list[Posting], int]:
    """Postings returning ``amount`` (of the original's amount) to purses and program."""
    card_part = amount * original.amount_charged // original.amount if original.amount else 0
    discount_part = amount - card_part
    draws = _draws(view, original)
    given: dict[int, int] = {}
    for child in view.children(original.id):
        if child.kind in ("refund", "reversal"):
            for p in view.postings_of(child.id):
                if p.code in (TransferCode.REFUND, TransferCode.REVERSAL):
                    given[p.credit_account_id] = given.get(p.credit_account_id, 0) + p.amount
    postings: list[Posting] = []
    left = card_part
    for d in reversed(draws):  # last drawn (the general purse) gets back first
        room = d.amount - given.get(d.debit_account_id, 0)
        take = min(room, left)
        if take > 0:
            postings.append(
                Posting(d.credit_account_id, d.debit_account_id, take, code, user_data=d.user_data)
            )
            given[d.debit_account_id] = given.get(d.debit_account_id, 0) + take
            left -= take
    assert left == 0, "cannot give back more than the original drew"
    funded_by = original.discount_funded_by
    if discount_part and funded_by and funded_by != "merchant":
        program_account = (ctx.program_accounts or {}).get(funded_by)
        assert program_account is not None
        postings.append(
            Posting(
                ctx.merchant.payable_account_id,
                program_account,
                discount_part,
                code,
                user_data=f"discount {original.discount_rule} back",
            )
        )
    return postings, card_part


def decide_refund(request: FinancialRequest, view: LedgerView, ctx: FlowContext) -> Outcome:
    """A refund (0200, 200000) of an earlier purchase named by its RRN (field 48 ``ORN``)."""
    if view.tombstoned(_key(request)):
        return Outcome(TOMBSTONED, amount=request.amount)
    rrn = request.additional.get("ORN")
    if not rrn:
        return Outcome("30", amount=request.amount)
    original = view.transaction_by_rrn(ctx.merchant.id, rrn)
    snapshot = view.snapshot
    if original is None or snapshot is None or original.card_id != snapshot.card.id:
        return Outcome("25", amount=request.amount)
    left = original.amount - original.refunded_amount - original.reversed_amount
    amount = request.amount
    if amount <= 0 or amount > left:
        return Outcome("13", amount=amount, record={"original_id": original.id})
    postings, card_part = _give_back(view, original, amount, TransferCode.REFUND, ctx)
    return Outcome(
        "00",
        postings=tuple(postings),
        amount=amount,
        response_fields={
            54: amount_block("00", "90", amount, "C") + amount_block("00", "92", card_part, "C")
        },
        record={
            "original_id": original.id,
            "amount_charged": card_part,
            "discount": amount - card_part,
            "purses_used": original.purses_used,
        },
        updates=((original.id, {"refunded_amount": original.refunded_amount + amount}),),
        event={"original_rrn": original.rrn, "amount_charged": card_part},
    )


def decide_reversal(
    request: FinancialRequest, view: LedgerView, ctx: FlowContext, *, advice: bool
) -> Outcome:
    """A reversal (0400) or reversal advice (0420) of the request named by field 90."""
    key = _original_key(request)
    if key is None:
        return Outcome("30")
    original = view.transaction_by_key(key)
    if original is None:
        # Not seen yet: leave a tombstone so that the late original is declined.
        return Outcome("00" if advice else "25", tombstone=key)
    record: dict[str, object] = {"original_id": original.id}
    remaining = original.amount - original.reversed_amount - original.refunded_amount
    if not original.approved or remaining <= 0 or original.kind in ("balance", "reversal"):
        return Outcome("00", record=record)  # nothing (left) to reverse
    actual = request.replacement_amount
    amount = (
        remaining if actual is None else max(0, original.amount - actual - original.reversed_amount)
    )
    amount = min(amount, remaining)
    if amount == 0:
        return Outcome("00", record=record)
    if original.kind == "preauth" and not _hold_alive(original, ctx):
        return Outcome("00", record=record)  # completed, expired or voided: nothing held
    update: dict[str, object] = {"reversed_amount": original.reversed_amount + amount}
    if original.kind == "preauth":
        postings = _reverse_hold(view, original, amount, ctx)
        if amount == remaining:
            update["hold_state"] = "voided"
    elif original.kind == "refund":
        postings = [
            Posting(
                p.credit_account_id,
                p.debit_account_id,
                p.amount * amount // original.amount,
                TransferCode.REVERSAL,
                user_data=p.user_data,
            )
            for p in view.postings_of(original.id)
        ]
        postings = [p for p in postings if p.amount > 0]
    else:
        postings, card_part = _give_back(view, original, amount, TransferCode.REVERSAL, ctx)
        record["amount_charged"] = card_part
    return Outcome(
        "00",
        postings=tuple(postings),
        amount=amount,
        record=record,
        updates=((original.id, update),),
        event={"original_rrn": original.rrn, "original_kind": original.kind},
    )


def _reverse_hold(
    view: LedgerView, original: TransactionRecord, amount: int, ctx: FlowContext
) -> list[Posting]:
    holds = live_holds(view, original)
    postings = _voids(holds)
    keep = sum(h.amount for h in holds) - amount
    if keep > 0:  # a partial reversal: hold the rest again, from the same purses
        left = keep
        for hold in holds:
            take = min(hold.amount, left)
            if take > 0:
                postings.append(
                    replace(
                        hold,
                        amount=take,
                        id="",
                        pending_id=None,
                        flags=TransferFlags.PENDING,
                        timeout_s=_seconds_left(original, ctx),
                    )
                )
                left -= take
    return postings


def _seconds_left(original: TransactionRecord, ctx: FlowContext) -> int:
    if original.hold_expires_at is None:
        return ctx.hold_period_s
    left = datetime.fromisoformat(original.hold_expires_at) - ctx.now
    return max(1, int(left.total_seconds()))


# --- reconciliation -------------------------------------------------------------------------


def decide_reconciliation(request: FinancialRequest, view: LedgerView, ctx: FlowContext) -> Outcome:
    """Terminal reconciliation (0500, 920000): compare the terminal's totals with ours."""
    message = request.message
    theirs = tuple(int(message.get(n) or "0") for n in (74, 76, 86, 88))
    ours = view.terminal_totals(request.tid, ctx.today.isoformat())
    mine = (ours.credits_count, ours.debits_count, ours.credits_amount, ours.debits_amount)
    fields = {
        74: f"{mine[0]:010d}",
        76: f"{mine[1]:010d}",
        86: f"{mine[2]:016d}",
        88: f"{mine[3]:016d}",
    }
    return Outcome(
        "00" if theirs == mine else "95",
        response_fields=fields,
        event={"terminal_totals": list(mine), "declared": list(theirs)},
    )
