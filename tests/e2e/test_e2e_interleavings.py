"""Property (issue 5): any interleaving of POS stories leaves every balance where a model says.

A *story* is what one terminal does about one payment: a purchase with its optional reversal
(0400 or 0420, full or partial, sent before or after the purchase), refund by RRN and
retransmissions; or a pre-authorization with its optional reversal, completion (0220, within
or over the 15 % tolerance), the completion's reversal and refund. Hypothesis draws several
stories, merges them in a random order that keeps each story's own order, and sends every
request on one of 2-4 connections. Retransmissions are identical resends or repeats with the
MTI ending in 1 (0201, 0101, 0221, 0401, 0421), sent later or at the same time as the first copy
(on another connection, both in flight together).

The model follows the documented rules only (docs/pos-interface.md): waterfall TR then GN at
the hotel, HOTEL20 (20 %, cap 5,000,000, 4 uses a month, fully reversed payments do not count),
daily count/amount limits, `51` when the payable purses do not hold the amount to charge,
proportional refunds and reversals given back last drawn first, completion at most +15 % with
the holds released, tombstones (`25`/`00` for a reversal of an unseen original, `05` for the late
original), exactly-once replays. After every example it checks each purse's balance and
available balance, the merchants' payables, terminal reconciliation (0500), that debits equal
credits and that the journal hash chain verifies.

Cards: M0002 and M0006 (general purse only) and M0001 at the supermarket HNR00004 (no discount
rule, GN only); M0001 at the hotel HNR00001 (TR then GN, HOTEL20, merchant-funded), also in
runs of several hotel nights so that the fifth payment of the month gets no discount. A fresh
switch (SQLite) per example, 40 examples, a few seconds. Not covered here: reversals of refunds,
hold expiry and program-funded discounts (BOOK10).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger.demo import merchant_account_code, purse_account_code
from scripts.pos import PosClient, PosTerminal
from switch.codec import Message
from switch.requests import parse_tlv

from conftest import RunningSwitch, make_config, running_switch
from helpers import M0002, M0006, amounts

HOTEL, MARKET = "HNR00001", "HNR00004"
MERCHANT = {HOTEL: "HNR000000000001", MARKET: "HNR000000000004"}
CARDS = {"M0001": ("6362147682085715", "1234"), "M0002": M0002, "M0006": M0006}
PURSES_START = {
    ("M0001", "GN"): 50_000_000,
    ("M0001", "TR"): 20_000_000,
    ("M0002", "GN"): 3_000_000,
    ("M0006", "GN"): 1_000_000_000,
}
# (daily count, daily amount); the single-payment maximum is 500,000,000 for every card
LIMITS = {
    "M0001": (50, 200_000_000),
    "M0002": (50, 200_000_000),
    "M0006": (1_000_000, 10_000_000_000),
}
PAYMENT_MAX = 500_000_000
HOTEL20_PERCENT, HOTEL20_CAP, HOTEL20_USES = 20, 5_000_000, 4
TOLERANCE_PERCENT = 115
NO_SUCH_RRN = "999999999999"

# (member, terminal, largest amount drawn)
PAYMENTS = (
    ("M0002", MARKET, 2_500_000),
    ("M0006", MARKET, 50_000_000),
    ("M0001", MARKET, 20_000_000),
    ("M0001", HOTEL, 30_000_000),
    ("M0001", HOTEL, 30_000_000),  # twice: reach the 4 uses of HOTEL20 and drain TR
)
HOLDS = (("M0001", HOTEL, 30_000_000), ("M0002", MARKET, 2_500_000))

Key = tuple[str, str, str]  # terminal id, STAN, field 7
READER = PosTerminal.demo(HOTEL)  # decodes any shetab87 payload


def key_of(message: Message) -> Key:
    return (message.get(41) or "", message.get(11) or "", message.get(7) or "")


def waterfall(member: str, tid: str) -> list[str]:
    return ["TR", "GN"] if (member, tid) == ("M0001", HOTEL) else ["GN"]


# --- the model -----------------------------------------------------------------------------


@dataclass
class Record:
    """What the model knows of a request the switch has seen (first arrival)."""

    kind: str
    tid: str
    member: str
    amount: int
    approved: bool = False
    charged: int = 0
    discount_rule: str = ""
    draws: list[tuple[str, int]] = field(default_factory=list)  # in draw order
    given: Counter[str] = field(default_factory=Counter)  # given back per purse
    refunded: int = 0
    reversed: int = 0
    holds: list[tuple[str, int]] = field(default_factory=list)
    hold_state: str = ""


@dataclass
class Model:
    balance: dict[tuple[str, str], int] = field(default_factory=lambda: dict(PURSES_START))
    held: Counter[tuple[str, str]] = field(default_factory=Counter)
    payable: Counter[str] = field(default_factory=Counter)
    records: dict[Key, Record] = field(default_factory=dict)
    responses: dict[Key, Message] = field(default_factory=dict)
    tombstones: set[Key] = field(default_factory=set)
    by_rrn: dict[tuple[str, str], Record] = field(default_factory=dict)

    # live figures, as the switch computes them from its transactions
    def _payments(self, member: str) -> list[Record]:
        return [
            r
            for r in self.records.values()
            if r.member == member
            and r.approved
            and r.kind in ("purchase", "completion")
            and r.reversed < r.amount
        ]

    def day_totals(self, member: str) -> tuple[int, int]:
        payments = self._payments(member)
        return sum(r.amount - r.reversed for r in payments), len(payments)

    def hotel_uses(self, member: str) -> int:
        return sum(1 for r in self._payments(member) if r.discount_rule == "HOTEL20")

    def available(self, member: str, purse: str) -> int:
        return self.balance[(member, purse)] - self.held[(member, purse)]

    def _guards(self, member: str, amount: int) -> str | None:
        if amount <= 0 or amount > PAYMENT_MAX:
            return "13"
        spent, count = self.day_totals(member)
        count_max, amount_max = LIMITS[member]
        if count + 1 > count_max:
            return "65"
        if spent + amount > amount_max:
            return "61"
        return None

    def _draw(
        self, member: str, tid: str, amount: int, released: Counter[str]
    ) -> list[tuple[str, int]] | None:
        parts, left = [], amount
        for purse in waterfall(member, tid):
            if left == 0:
                break
            take = min(self.available(member, purse) + released[purse], left)
            if take > 0:
                parts.append((purse, take))
                left -= take
        return parts if left == 0 else None

    def _discount(self, member: str, tid: str, amount: int) -> int:
        if tid != HOTEL or self.hotel_uses(member) >= HOTEL20_USES:
            return 0
        return max(0, min(amount * HOTEL20_PERCENT // 100, HOTEL20_CAP, amount))

    def _pay(self, record: Record, released: Counter[str], response: Message, context: str) -> str:
        """Discount, waterfall and effects of a payment (purchase or completion)."""
        member, tid, amount = record.member, record.tid, record.amount
        discount = self._discount(member, tid, amount)
        charged = amount - discount
        if tid == HOTEL:
            event(f"hotel payment, {'HOTEL20' if discount else 'no discount'}")
        parts = self._draw(member, tid, charged, released)
        if parts is None:
            return "51"
        assert response.get(39) == "00", f"{context}: expected 00, got {response.get(39)}"
        a = amounts(response)
        assert (a[("00", "90")], a[("00", "91")], a[("00", "92")]) == (
            -amount,
            discount,
            -charged,
        ), f"{context}: field 54 {a}"
        tags = parse_tlv(response.get(48) or "")
        expected_tags = {"PRS": ",".join(p for p, _ in parts)}
        if discount:
            expected_tags["DSC"] = "HOTEL20"
        assert tags == expected_tags, f"{context}: field 48 {tags} != {expected_tags}"
        for purse, part in parts:
            assert a[(purse, "02")] == self.available(member, purse) + released[purse] - part
        for purse, hold in released.items():
            self.held[(member, purse)] -= hold
        for purse, part in parts:
            self.balance[(member, purse)] -= part
        self.payable[MERCHANT[tid]] += charged
        record.approved, record.charged, record.draws = True, charged, parts
        record.discount_rule = "HOTEL20" if discount else ""
        self.by_rrn[(MERCHANT[tid], response.get(37) or "")] = record
        return "00"

    def _give_back(self, record: Record, amount: int) -> int:
        card_part = amount * record.charged // record.amount
        left = card_part
        for purse, drawn in reversed(record.draws):
            take = min(drawn - record.given[purse], left)
            if take > 0:
                record.given[purse] += take
                self.balance[(record.member, purse)] += take
                left -= take
        assert left == 0
        self.payable[MERCHANT[record.tid]] -= card_part
        return card_part

    # --- one request, first arrival ------------------------------------------------------------

    def purchase(self, key: Key, member: str, amount: int, response: Message) -> str:
        record = Record("purchase", key[0], member, amount)
        self.records[key] = record
        if key in self.tombstones:
            return "05"
        declined = self._guards(member, amount)
        if declined is not None:
            return declined
        return self._pay(record, Counter(), response, f"purchase {key}")

    def preauth(self, key: Key, member: str, amount: int) -> str:
        record = Record("preauth", key[0], member, amount)
        self.records[key] = record
        if key in self.tombstones:
            return "05"
        declined = self._guards(member, amount)
        if declined is not None:
            return declined
        parts = self._draw(member, key[0], amount, Counter())
        if parts is None:
            return "51"
        for purse, part in parts:
            self.held[(member, purse)] += part
        record.approved, record.holds, record.hold_state = True, parts, "pending"
        return "00"

    def completion(self, key: Key, hold_key: Key, final: int, response: Message) -> str:
        hold = self.records.get(hold_key)
        member = hold.member if hold is not None else ""
        record = Record("completion", key[0], member, final)
        self.records[key] = record
        if key in self.tombstones:
            return "05"
        if hold is None or not hold.approved or hold.hold_state != "pending":
            return "25"
        held = hold.amount - hold.reversed
        if final <= 0 or final * 100 > held * TOLERANCE_PERCENT:
            return "13"
        released: Counter[str] = Counter()
        for purse, part in hold.holds:
            released[purse] += part
        code = self._pay(record, released, response, f"completion {key}")
        if code == "00":
            hold.hold_state, hold.holds = "completed", []
        return code

    def refund(self, key: Key, member: str, rrn: str, amount: int, response: Message) -> str:
        record = Record("refund", key[0], member, amount)
        self.records[key] = record
        original = self.by_rrn.get((MERCHANT[key[0]], rrn))
        if original is None or original.member != member:
            return "25"
        if amount <= 0 or amount > original.amount - original.refunded - original.reversed:
            return "13"
        card_part = self._give_back(original, amount)
        a = amounts(response)
        assert (a[("00", "90")], a[("00", "92")]) == (amount, card_part), f"refund {key}: {a}"
        original.refunded += amount
        record.approved = True
        return "00"

    def reversal(self, key: Key, original_key: Key, actual: int | None, advice: bool) -> str:
        self.records[key] = Record("reversal", key[0], "", 0)
        original = self.records.get(original_key)
        if original is None:
            self.tombstones.add(original_key)
            return "00" if advice else "25"
        remaining = original.amount - original.reversed - original.refunded
        if (
            not original.approved
            or remaining <= 0
            or original.kind
            not in (
                "purchase",
                "completion",
                "preauth",
            )
        ):
            return "00"
        amount = (
            remaining if actual is None else max(0, original.amount - actual - original.reversed)
        )
        amount = min(amount, remaining)
        if amount == 0:
            return "00"
        if original.kind == "preauth":
            if original.hold_state != "pending":
                return "00"
            keep = sum(part for _, part in original.holds) - amount
            for purse, part in original.holds:
                self.held[(original.member, purse)] -= part
            holds = []
            for purse, part in original.holds:
                take = min(part, keep)
                if take > 0:
                    holds.append((purse, take))
                    self.held[(original.member, purse)] += take
                    keep -= take
            original.holds = holds
            if amount == remaining:
                original.hold_state = "voided"
        else:
            self._give_back(original, amount)
        original.reversed += amount
        return "00"

    def terminal_totals(self, tid: str) -> tuple[int, int, int, int]:
        """(credits count, debits count, credits amount, debits amount), as in a 0500."""
        mine = [r for r in self.records.values() if r.tid == tid and r.approved]
        debits = [r for r in mine if r.kind in ("purchase", "completion") and r.reversed < r.amount]
        credits = [r for r in mine if r.kind == "refund"]
        return (
            len(credits),
            len(debits),
            sum(r.amount for r in credits),
            sum(r.amount - r.reversed for r in debits),
        )


# --- stories -------------------------------------------------------------------------------


@dataclass
class Step:
    """One request of a story: its payload is built when the story is drawn, except a refund's
    (it needs the RRN of its original's response) and a retransmission's."""

    kind: str  # purchase, preauth, completion, reversal, refund, repeat
    tid: str
    member: str = ""
    amount: int = 0
    payload: bytes | None = None
    original: Step | None = None  # what a reversal, completion, refund or repeat refers to
    actual: int | None = None  # a partial reversal's field 95
    advice: bool = False
    repeat_mti1: bool = False
    echoes: list[tuple[bool, int]] = field(default_factory=list)  # concurrent repeats


def repeat_payload(terminal: PosTerminal, payload: bytes, mti1: bool) -> bytes:
    if not mti1:
        return payload
    message = terminal.read(payload)
    return terminal.sign(Message(message.mti[:3] + "1", dict(message.fields)))


def draw_amount(data: st.DataObject, top: int) -> int:
    return data.draw(
        st.one_of(
            st.integers(1, top), st.sampled_from([1, 4, 5, 1_000_000, top // 2, top * 2 // 3, top])
        ),
        "amount",
    )


def draw_repeats(data: st.DataObject, step: Step, steps: list[Step], n_conn: int) -> None:
    """Maybe a later retransmission (anywhere after ``step`` in its story), maybe one sent at the
    same time as the first copy."""
    mode = data.draw(st.sampled_from(["none", "later", "together", "both"]), "repeat")
    if mode in ("later", "both"):
        at = data.draw(st.integers(steps.index(step) + 1, len(steps)), "repeat at")
        steps.insert(
            at,
            Step("repeat", step.tid, original=step, repeat_mti1=data.draw(st.booleans(), "mti1")),
        )
    if mode in ("together", "both"):
        step.echoes.append(
            (data.draw(st.booleans(), "mti1"), data.draw(st.integers(0, n_conn - 1)))
        )


def draw_reversal(data: st.DataObject, t: PosTerminal, original: Step) -> Step:
    partial = data.draw(st.booleans(), "partial")
    actual = data.draw(st.integers(0, original.amount), "actual") if partial else None
    advice = data.draw(st.booleans(), "advice")
    assert original.payload is not None
    payload = t.reversal(original.payload, advice=advice, actual_amount=actual)
    return Step(
        "reversal", t.profile.tid, payload=payload, original=original, actual=actual, advice=advice
    )


def draw_refund(data: st.DataObject, original: Step) -> Step:
    percent = data.draw(st.integers(1, 110), "refund %")
    amount = max(1, original.amount * percent // 100)
    return Step("refund", original.tid, member=original.member, amount=amount, original=original)


def draw_purchase_story(
    data: st.DataObject, terminals: dict[str, PosTerminal], n_conn: int
) -> list[Step]:
    member, tid, top = data.draw(st.sampled_from(PAYMENTS), "payment")
    t = terminals[tid]
    pan, pin = CARDS[member]
    amount = draw_amount(data, top)
    purchase = Step("purchase", tid, member, amount, t.purchase(pan=pan, pin=pin, amount=amount))
    steps = [purchase]
    refund = draw_refund(data, purchase) if data.draw(st.booleans(), "refund?") else None
    if refund is not None:
        steps.append(refund)
    if data.draw(st.booleans(), "reversal?"):
        reversal = draw_reversal(data, t, purchase)
        steps.insert(data.draw(st.integers(0, len(steps)), "reversal at"), reversal)
    for step in list(steps):
        draw_repeats(data, step, steps, n_conn)
    return steps


def draw_hotel_nights(
    data: st.DataObject, terminals: dict[str, PosTerminal], n_conn: int
) -> list[Step]:
    """Several plain hotel payments by M0001: HOTEL20 runs out after 4 uses in a month."""
    t = terminals[HOTEL]
    pan, pin = CARDS["M0001"]
    steps = []
    for _ in range(data.draw(st.integers(2, 5), "nights")):
        amount = data.draw(st.integers(5, 3_000_000), "night amount")
        steps.append(
            Step("purchase", HOTEL, "M0001", amount, t.purchase(pan=pan, pin=pin, amount=amount))
        )
    for step in list(steps):
        draw_repeats(data, step, steps, n_conn)
    return steps


def draw_hold_story(
    data: st.DataObject, terminals: dict[str, PosTerminal], n_conn: int
) -> list[Step]:
    member, tid, top = data.draw(st.sampled_from(HOLDS), "hold")
    t = terminals[tid]
    pan, pin = CARDS[member]
    amount = draw_amount(data, top)
    hold = Step("preauth", tid, member, amount, t.preauth(pan=pan, pin=pin, amount=amount))
    steps = [hold]
    if data.draw(st.booleans(), "completion?"):
        percent = data.draw(st.one_of(st.integers(1, 120), st.just(115)), "completion %")
        final = max(1, amount * percent // 100)
        completion = Step(
            "completion", tid, member, final, t.completion(hold.payload or b"", amount=final)
        )
        completion.original = hold
        steps.append(completion)
        if data.draw(st.booleans(), "refund of completion?"):
            steps.append(draw_refund(data, completion))
        if data.draw(st.booleans(), "reversal of completion?"):
            reversal = draw_reversal(data, t, completion)
            at = data.draw(st.integers(1, len(steps)), "completion reversal at")
            steps.insert(at, reversal)
    if data.draw(st.booleans(), "reversal of hold?"):
        steps.insert(
            data.draw(st.integers(0, len(steps)), "hold reversal at"), draw_reversal(data, t, hold)
        )
    for step in list(steps):
        draw_repeats(data, step, steps, n_conn)
    return steps


# --- talking to the switch -----------------------------------------------------------------


def response_mti(request_mti: str) -> str:
    return request_mti[:2] + str(int(request_mti[2]) + 1) + "0"


async def exchange(
    clients: list[PosClient], terminals: dict[str, PosTerminal], sends: list[tuple[int, bytes]]
) -> list[Message]:
    """Send every payload on its connection at once, then match the responses (MTI, 11, 41)."""
    for conn, payload in sends:
        await clients[conn].send(payload)
    raw: list[tuple[bytes, int]] = []
    for conn, count in Counter(conn for conn, _ in sends).items():
        for _ in range(count):
            raw.append((await clients[conn].receive(10.0), conn))
    pool: list[Message] = []
    for data, _conn in raw:
        tid = READER.read(data).get(41) or ""
        message, mac_ok = terminals[tid].check_response(data)
        assert mac_ok is True, f"response MAC wrong: {message}"
        pool.append(message)
    out = []
    for _conn, payload in sends:
        request = READER.read(payload)
        match = next(
            m
            for m in pool
            if m.mti == response_mti(request.mti) and key_of(m)[:2] == key_of(request)[:2]
        )
        pool.remove(match)
        out.append(match)
    return out


COMPARED = (15, 37, 38, 39, 48, 54)


def original_key(step: Step) -> Key:
    assert step.original is not None and step.original.payload is not None
    return key_of(READER.read(step.original.payload))


def same_answer(a: Message, b: Message) -> bool:
    return all(a.get(n) == b.get(n) for n in COMPARED)


def apply(model: Model, step: Step, request: Message, response: Message) -> None:
    """Check one first-arrival response against the model (and update it)."""
    key = key_of(request)
    if key in model.responses:
        stored = model.responses[key]
        assert same_answer(response, stored), f"replay of {key}: {response} != {stored}"
        return
    context = f"{step.kind} {key}"
    if step.kind == "purchase":
        expected = model.purchase(key, step.member, step.amount, response)
    elif step.kind == "preauth":
        expected = model.preauth(key, step.member, step.amount)
    elif step.kind == "completion":
        expected = model.completion(key, original_key(step), step.amount, response)
    elif step.kind == "refund":
        orn = parse_tlv(request.get(48) or "")["ORN"]
        expected = model.refund(key, step.member, orn, step.amount, response)
    else:
        assert step.kind == "reversal" and step.original is not None
        expected = model.reversal(key, original_key(step), step.actual, step.advice)
    assert response.get(39) == expected, f"{context}: expected {expected}, got {response}"
    event(f"{step.kind} {request.mti} -> {expected}")
    model.responses[key] = response


async def run_example(
    s: RunningSwitch,
    terminals: dict[str, PosTerminal],
    order: list[tuple[Step, int]],
    n_conn: int,
) -> Model:
    model = Model()
    clients = [await PosClient.connect(s.host, s.port) for _ in range(n_conn)]
    try:
        for step, conn in order:
            t = terminals[step.tid]
            if step.kind == "repeat":
                assert step.original is not None and step.original.payload is not None
                payload = repeat_payload(t, step.original.payload, step.repeat_mti1)
                (response,) = await exchange(clients, terminals, [(conn, payload)])
                key = key_of(t.read(payload))
                assert key in model.responses, f"repeat of an unsent request {key}"
                assert same_answer(response, model.responses[key]), (
                    f"repeat of {key}: {response} != {model.responses[key]}"
                )
                continue
            if step.kind == "refund":
                assert step.original is not None and step.original.payload is not None
                first = model.responses[original_key(step)]
                rrn = first.get(37) or NO_SUCH_RRN
                pan = CARDS[step.member][0]
                step.payload = t.refund(pan=pan, amount=step.amount, original_rrn=rrn)
            assert step.payload is not None
            sends = [(conn, step.payload)]
            sends += [(c, repeat_payload(t, step.payload, mti1)) for mti1, c in step.echoes]
            responses = await exchange(clients, terminals, sends)
            request = t.read(step.payload)
            apply(model, step, request, responses[0])
            for other in responses[1:]:
                assert same_answer(other, responses[0]), f"{step.kind}: {other} != {responses[0]}"
        for tid, t in terminals.items():
            c_count, d_count, c_amount, d_amount = model.terminal_totals(tid)
            payload = t.reconciliation(
                credits_count=c_count,
                debits_count=d_count,
                credits_amount=c_amount,
                debits_amount=d_amount,
            )
            (answer,) = await exchange(clients, terminals, [(0, payload)])
            assert answer.get(39) == "00", f"{tid} totals {model.terminal_totals(tid)}: {answer}"
    finally:
        for client in clients:
            await client.close()
    return model


def check_ledger(s: RunningSwitch, model: Model) -> None:
    store = s.app.store
    for (member, purse), balance in model.balance.items():
        account = store.account_by_code(purse_account_code(member, purse))
        assert (member, purse, account.balance_credit) == (member, purse, balance)
        assert (member, purse, account.available_credit) == (
            member,
            purse,
            model.available(member, purse),
        )
    for tid, merchant in MERCHANT.items():
        account = store.account_by_code(merchant_account_code(merchant))
        assert (tid, account.balance_credit) == (tid, model.payable[merchant])
    assert store.totals().balanced, "debits must equal credits"
    assert store.verify_journal() is None, "journal hash chain must verify"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_interleaved_stories_leave_every_balance_as_the_model_says(data: st.DataObject) -> None:
    n_conn = data.draw(st.integers(2, 4), "connections")
    terminals = {tid: PosTerminal.demo(tid) for tid in MERCHANT}
    draw_story: list[Callable[[st.DataObject, dict[str, PosTerminal], int], list[Step]]] = [
        draw_purchase_story,
        draw_purchase_story,
        draw_hold_story,
        draw_hotel_nights,
    ]
    stories = [
        data.draw(st.sampled_from(draw_story), "story kind")(data, terminals, n_conn)
        for _ in range(data.draw(st.integers(1, 9), "stories"))
    ]
    order: list[tuple[Step, int]] = []
    while any(stories):
        index = data.draw(st.sampled_from([i for i, story in enumerate(stories) if story]))
        order.append((stories[index].pop(0), data.draw(st.integers(0, n_conn - 1), "conn")))
    with tempfile.TemporaryDirectory() as tmp, running_switch(make_config(Path(tmp))) as s:
        model = asyncio.run(run_example(s, terminals, order, n_conn))
        check_ledger(s, model)
