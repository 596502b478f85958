"""End to end over TCP: every flow of the POS spec with the demo data (issue 5 scenarios)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from ledger import schema
from ledger.demo import merchant_account_code, program_account_code, purse_account_code
from scripts.pos import PosTerminal
from switch.codec import Message
from switch.dialects import get_dialect
from switch.requests import parse_tlv

from conftest import RunningSwitch, make_config, running_switch
from helpers import M0002, M0006, amounts, ask, talk

DIALECT = get_dialect("shetab87")
M0001 = ("6362147682085715", "1234")
M0005 = ("6362140409390583", "0000")
HOTEL, BOOKSTORE, MARKET = "HNR00001", "HNR00002", "HNR00004"


def balance(s: RunningSwitch, member: str, purse: str) -> int:
    return s.app.store.account_by_code(purse_account_code(member, purse)).balance_credit


def available(s: RunningSwitch, member: str, purse: str) -> int:
    return s.app.store.account_by_code(purse_account_code(member, purse)).available_credit


def payable(s: RunningSwitch, merchant_id: str) -> int:
    return s.app.store.account_by_code(merchant_account_code(merchant_id)).balance_credit


def tags(message: Message) -> dict[str, str]:
    return parse_tlv(message.get(48) or "")


@pytest.fixture
def s(tmp_path: Path, dialect_name: str) -> Iterator[RunningSwitch]:
    with running_switch(make_config(tmp_path, dialect=dialect_name)) as running:
        yield running
        assert running.app.store.totals().balanced, "debits must equal credits"
        assert running.app.store.verify_journal() is None, "journal hash chain must verify"


def test_hotel_discount_drawn_from_the_tourism_purse_first(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    response, ok = ask(t, s.host, s.port, t.purchase(pan=M0001[0], pin=M0001[1], amount=10_000_000))
    assert response.get(39) == "00" and ok is True
    assert tags(response) == {"DSC": "HOTEL20", "PRS": "TR"}
    a = amounts(response)
    assert (a[("00", "90")], a[("00", "91")], a[("00", "92")]) == (
        -10_000_000,
        2_000_000,
        -8_000_000,
    )
    assert a[("TR", "02")] == 12_000_000
    assert balance(s, "M0001", "TR") == 12_000_000 and balance(s, "M0001", "GN") == 50_000_000
    # merchant-funded: the hotel is paid the amount less the discount
    assert payable(s, "HNR000000000001") == 8_000_000


def test_fifth_hotel_payment_in_a_month_gets_no_discount(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    results = [
        ask(t, s.host, s.port, t.purchase(pan=M0001[0], pin=M0001[1], amount=1_000_000))[0]
        for _ in range(5)
    ]
    assert [r.get(39) for r in results] == ["00"] * 5
    assert [tags(r).get("DSC") for r in results] == ["HOTEL20"] * 4 + [None]
    assert amounts(results[4])[("00", "91")] == 0


def test_book_grant_purse_cannot_pay_at_the_supermarket(s: RunningSwitch) -> None:
    t = PosTerminal.demo(MARKET)
    response, _ = ask(t, s.host, s.port, t.purchase(pan=M0005[0], pin=M0005[1], amount=1000))
    assert response.get(39) == "57"
    assert balance(s, "M0005", "BK") == 5_000_000


def test_bookstore_discount_funded_by_the_book_program(s: RunningSwitch) -> None:
    program_before = s.app.store.account_by_code(program_account_code("MOC-BOOK"))
    t = PosTerminal.demo(BOOKSTORE)
    response, ok = ask(t, s.host, s.port, t.purchase(pan=M0005[0], pin=M0005[1], amount=2_000_000))
    assert response.get(39) == "00" and ok is True
    assert tags(response) == {"DSC": "BOOK10", "PRS": "BK"}
    assert balance(s, "M0005", "BK") == 5_000_000 - 1_800_000
    # program-funded: the bookstore gets the full amount, 200,000 of it from MOC-BOOK
    assert payable(s, "HNR000000000002") == 2_000_000
    program_after = s.app.store.account_by_code(program_account_code("MOC-BOOK"))
    assert program_after.debits_posted - program_before.debits_posted == 200_000


def test_preauth_and_completion_above_the_hold_within_tolerance(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    hold = t.preauth(pan=M0001[0], pin=M0001[1], amount=30_000_000)
    response, ok = ask(t, s.host, s.port, hold)
    assert response.mti == "0110" and response.get(39) == "00" and ok is True
    assert response.get(38)
    assert available(s, "M0001", "TR") == 0 and available(s, "M0001", "GN") == 40_000_000
    assert balance(s, "M0001", "GN") == 50_000_000, "a hold charges nothing"
    done, ok = ask(t, s.host, s.port, t.completion(hold, amount=32_000_000))
    assert done.mti == "0230" and done.get(39) == "00" and ok is True
    a = amounts(done)
    # 20 % of 32,000,000 is 6,400,000, capped at 5,000,000
    assert (a[("00", "91")], a[("00", "92")]) == (5_000_000, -27_000_000)
    assert tags(done) == {"DSC": "HOTEL20", "PRS": "TR,GN"}
    assert balance(s, "M0001", "TR") == 0 and balance(s, "M0001", "GN") == 43_000_000
    assert available(s, "M0001", "GN") == 43_000_000, "the hold is released"
    assert payable(s, "HNR000000000001") == 27_000_000
    again, _ = ask(t, s.host, s.port, t.completion(hold, amount=1_000))
    assert again.get(39) == "25", "a completed hold cannot be completed again"


def test_completion_over_tolerance_and_unknown_hold(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    hold = t.preauth(pan=M0001[0], pin=M0001[1], amount=10_000_000)
    assert ask(t, s.host, s.port, hold)[0].get(39) == "00"
    assert ask(t, s.host, s.port, t.completion(hold, amount=11_500_001))[0].get(39) == "13"
    assert available(s, "M0001", "TR") == 10_000_000, "a refused completion changes nothing"
    assert ask(t, s.host, s.port, t.completion(hold, amount=11_500_000))[0].get(39) == "00"
    unknown = t.preauth(pan=M0001[0], pin=M0001[1], amount=1)  # never sent
    assert ask(t, s.host, s.port, t.completion(unknown, amount=1))[0].get(39) == "25"


def test_hold_left_open_past_the_hold_period_is_released(tmp_path: Path, dialect_name: str) -> None:
    config = make_config(tmp_path, hold_period_s=1, hold_sweep_interval_s=0.2, dialect=dialect_name)
    with running_switch(config) as s:
        t = PosTerminal.demo(HOTEL)
        hold = t.preauth(pan=M0001[0], pin=M0001[1], amount=5_000_000)
        assert ask(t, s.host, s.port, hold)[0].get(39) == "00"
        assert available(s, "M0001", "TR") == 15_000_000
        time.sleep(1.2)
        now = datetime.now(UTC)  # the sweeper of `honar serve` does this every interval
        expired = s.app.store.expire_pending(now.isoformat(), business_date=now.date().isoformat())
        assert len(expired) == 1
        assert available(s, "M0001", "TR") == 20_000_000
        assert ask(t, s.host, s.port, t.completion(hold, amount=5_000_000))[0].get(39) == "25"
        assert s.app.store.totals().balanced and s.app.store.verify_journal() is None


def test_refunds_go_back_to_the_purses_they_came_from(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    bought, _ = ask(t, s.host, s.port, t.purchase(pan=M0001[0], pin=M0001[1], amount=10_000_000))
    rrn = bought.get(37) or ""
    refund, ok = ask(t, s.host, s.port, t.refund(pan=M0001[0], amount=5_000_000, original_rrn=rrn))
    assert refund.get(39) == "00" and ok is True
    # half of what was charged (8,000,000) goes back to TR
    assert balance(s, "M0001", "TR") == 12_000_000 + 4_000_000
    assert payable(s, "HNR000000000001") == 8_000_000 - 4_000_000
    over, _ = ask(t, s.host, s.port, t.refund(pan=M0001[0], amount=5_000_001, original_rrn=rrn))
    assert over.get(39) == "13"
    assert (
        ask(t, s.host, s.port, t.refund(pan=M0001[0], amount=1, original_rrn="999999999999"))[
            0
        ].get(39)
        == "25"
    )
    other, _ = ask(t, s.host, s.port, t.refund(pan=M0002[0], amount=1, original_rrn=rrn))
    assert other.get(39) == "25", "a refund must go to the card that paid"


def test_reversals_full_partial_repeated_and_before_the_original(s: RunningSwitch) -> None:
    t = PosTerminal.demo(MARKET)
    purchase = t.purchase(pan=M0002[0], pin=M0002[1], amount=1_000_000)
    assert ask(t, s.host, s.port, purchase)[0].get(39) == "00"
    partial, ok = ask(t, s.host, s.port, t.reversal(purchase, actual_amount=600_000))
    assert partial.mti == "0410" and partial.get(39) == "00" and ok is True
    assert balance(s, "M0002", "GN") == 3_000_000 - 600_000
    full, _ = ask(t, s.host, s.port, t.reversal(purchase))
    assert full.get(39) == "00" and balance(s, "M0002", "GN") == 3_000_000
    again, _ = ask(t, s.host, s.port, t.reversal(purchase, advice=True))
    assert again.mti == "0430" and again.get(39) == "00"
    assert balance(s, "M0002", "GN") == 3_000_000, "reversing a reversed purchase changes nothing"
    # an advice for a purchase the switch has not seen leaves a tombstone
    late = t.purchase(pan=M0002[0], pin=M0002[1], amount=500_000)
    assert ask(t, s.host, s.port, t.reversal(late, advice=True))[0].get(39) == "00"
    assert ask(t, s.host, s.port, late)[0].get(39) == "05"
    assert balance(s, "M0002", "GN") == 3_000_000
    unknown = t.purchase(pan=M0002[0], pin=M0002[1], amount=7)
    assert ask(t, s.host, s.port, t.reversal(unknown))[0].get(39) == "25"


def test_reversal_of_a_preauth_releases_the_hold(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    hold = t.preauth(pan=M0001[0], pin=M0001[1], amount=25_000_000)
    assert ask(t, s.host, s.port, hold)[0].get(39) == "00"
    assert available(s, "M0001", "GN") == 45_000_000
    assert ask(t, s.host, s.port, t.reversal(hold, actual_amount=21_000_000))[0].get(39) == "00"
    assert available(s, "M0001", "TR") + available(s, "M0001", "GN") == 70_000_000 - 21_000_000
    assert ask(t, s.host, s.port, t.reversal(hold))[0].get(39) == "00"
    assert available(s, "M0001", "TR") == 20_000_000 and available(s, "M0001", "GN") == 50_000_000
    assert ask(t, s.host, s.port, t.completion(hold, amount=1_000))[0].get(39) == "25"


def test_limits(s: RunningSwitch) -> None:
    t = PosTerminal.demo(MARKET)
    big = ask(t, s.host, s.port, t.purchase(pan=M0006[0], pin=M0006[1], amount=500_000_001))[0]
    assert big.get(39) == "13"
    with s.app.store.engine.begin() as connection:
        connection.execute(
            update(schema.cards)
            .where(schema.cards.c.member_id == "M0006")
            .values(daily_amount_max=3_000, daily_count_max=3)
        )
    codes = [
        ask(t, s.host, s.port, t.purchase(pan=M0006[0], pin=M0006[1], amount=amount))[0].get(39)
        for amount in (1_000, 1_500, 600, 400, 100)
    ]
    assert codes == ["00", "00", "61", "00", "65"]


def test_a_day_at_the_hotel_ends_reconciled(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    pay = t.purchase(pan=M0001[0], pin=M0001[1], amount=4_000_000)
    r1 = ask(t, s.host, s.port, pay)[0]
    hold = t.preauth(pan=M0001[0], pin=M0001[1], amount=6_000_000)
    assert ask(t, s.host, s.port, hold)[0].get(39) == "00"
    assert ask(t, s.host, s.port, t.completion(hold, amount=6_500_000))[0].get(39) == "00"
    refund = t.refund(pan=M0001[0], amount=1_000_000, original_rrn=r1.get(37) or "")
    assert ask(t, s.host, s.port, refund)[0].get(39) == "00"
    small = t.purchase(pan=M0006[0], pin=M0006[1], amount=300_000)
    assert ask(t, s.host, s.port, small)[0].get(39) == "00"
    assert ask(t, s.host, s.port, t.reversal(small))[0].get(39) == "00"
    declined = t.purchase(pan=M0001[0], pin="0000", amount=1)
    assert ask(t, s.host, s.port, declined)[0].get(39) == "55"
    # debits: 4,000,000 + 6,500,000 (the reversed purchase counts for nothing); credits: 1,000,000
    wrong, ok = ask(
        t,
        s.host,
        s.port,
        t.reconciliation(
            credits_count=1, debits_count=3, credits_amount=1_000_000, debits_amount=10_800_000
        ),
    )
    assert wrong.mti == "0510" and wrong.get(39) == "95" and ok is True
    assert (wrong.get(76), wrong.get(88)) == ("0000000002", "0000000010500000")
    right, _ = ask(
        t,
        s.host,
        s.port,
        t.reconciliation(
            credits_count=1, debits_count=2, credits_amount=1_000_000, debits_amount=10_500_000
        ),
    )
    assert right.get(39) == "00"


def test_every_decision_is_an_outbox_event_without_card_data(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    ask(t, s.host, s.port, t.purchase(pan=M0001[0], pin=M0001[1], amount=1_000))
    ask(t, s.host, s.port, t.purchase(pan=M0001[0], pin="9999", amount=1_000))
    with s.app.store.engine.connect() as connection:
        rows = connection.execute(select(schema.outbox)).all()
    payloads = [row.payload for row in rows]
    assert len([p for p in payloads if '"transactions/' in p or '"purchase"' in p]) >= 2
    assert all(M0001[0] not in p for p in payloads)
    assert any('"response_code": "55"' in p for p in payloads)


def test_retransmitted_completion_and_refund_change_nothing(s: RunningSwitch) -> None:
    t = PosTerminal.demo(HOTEL)
    hold = t.preauth(pan=M0001[0], pin=M0001[1], amount=2_000_000)
    ask(t, s.host, s.port, hold)
    completion = t.completion(hold, amount=2_000_000)
    first, second = (t.read(r) for r in talk(s.host, s.port, [completion, completion]))
    assert first.get(39) == second.get(39) == "00" and first.get(38) == second.get(38)
    assert balance(s, "M0001", "TR") == 20_000_000 - 1_600_000
