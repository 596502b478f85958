"""End to end over real TCP: the demo scenarios of the foundation issue, and their edges."""

from __future__ import annotations

from pathlib import Path

from ledger import demo
from scripts.pos import PosTerminal
from switch.codec import Message, decode
from switch.dialects import get_dialect
from switch.dialects.base import Framing

from conftest import RunningSwitch, make_config, running_switch
from helpers import M0002, M0003, M0004, amounts, ask, talk

DIALECT = get_dialect("shetab87")


def test_purchase_then_balance_shows_the_amount_drawn(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00004")
    before, ok = ask(t, s.host, s.port, t.balance(pan=M0002[0], pin=M0002[1]))
    assert before.get(39) == "00" and ok is True
    response, ok = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=1_000_000))
    assert response.get(39) == "00"
    assert ok is True, "response MAC must verify under the terminal's TAK"
    assert response.get(38) and len(response.get(38) or "") == 6
    assert response.get(37) and response.get(15)
    assert amounts(response)[("00", "92")] == -1_000_000
    after, ok = ask(t, s.host, s.port, t.balance(pan=M0002[0], pin=M0002[1]))
    assert ok is True
    assert amounts(before)[("00", "02")] == 3_000_000
    assert amounts(after)[("00", "02")] == amounts(before)[("00", "02")] - 1_000_000
    assert amounts(after)[("GN", "02")] == 2_000_000
    assert s.app.store.totals().balanced


def test_declines_of_the_issue(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00004")
    cases = [
        (t.purchase(pan=M0002[0], pin="9999", amount=1000), "55"),
        (t.purchase(pan=M0003[0], pin=M0003[1], amount=1000), "62"),
        (t.purchase(pan=M0004[0], pin=M0004[1], amount=1000, expiry="2401"), "54"),
        (t.purchase(pan=M0002[0], pin=M0002[1], amount=3_000_001), "51"),
        (t.purchase(pan=M0002[0], pin=M0002[1], amount=0), "13"),
        (t.purchase(pan="6362149173324547", pin="1234", amount=1000), "14"),  # bad Luhn
        (t.purchase(pan="6362140000000007", pin="1234", amount=1000), "14"),  # unknown card
        (
            t.card_request(
                processing_code="999999", pan=M0002[0], pin=M0002[1], amount=1, expiry="2812"
            ),
            "12",
        ),
        (
            t.card_request(
                processing_code="000000",
                pan=M0002[0],
                pin=M0002[1],
                amount=1,
                expiry="2812",
                extra={18: "5999"},
            ),
            "58",
        ),
        (
            t.card_request(
                processing_code="000000",
                pan=M0002[0],
                pin=M0002[1],
                amount=1,
                expiry="2812",
                extra={42: "HNR000000000001"},
            ),
            "03",
        ),
    ]
    for payload, expected in cases:
        response, ok = ask(t, s.host, s.port, payload)
        request = t.read(payload)
        assert response.get(39) == expected, (request.fields, response.fields)
        assert ok is True, f"{expected} responses carry a MAC"
        assert response.get(11) == request.get(11) and response.mti == "0210"
    # none of those moved money
    (after,) = [ask(t, s.host, s.port, t.balance(pan=M0002[0], pin=M0002[1]))[0]]
    assert amounts(after)[("GN", "02")] == 3_000_000
    assert s.app.store.totals().balanced


def test_tampered_mac_gets_63_without_mac_and_changes_nothing(
    switch_any_dialect: RunningSwitch,
) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00004")
    payload = t.purchase(pan=M0002[0], pin=M0002[1], amount=1000)
    tampered = payload[:-1] + bytes([payload[-1] ^ 0x40])
    response, ok = ask(t, s.host, s.port, tampered)
    assert response.get(39) == "63"
    assert ok is None and not response.has(64), "a 63 response carries no MAC"
    # a changed amount with the old MAC is also caught
    forged = payload.replace(b"000000001000", b"000000000001", 1)
    assert ask(t, s.host, s.port, forged)[0].get(39) == "63"
    balance = ask(t, s.host, s.port, t.balance(pan=M0002[0], pin=M0002[1]))[0]
    assert amounts(balance)[("GN", "02")] == 3_000_000


def test_pin_tries_lock_the_card_until_reset(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00004")
    codes = [
        ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=pin, amount=1000))[0].get(39)
        for pin in ("1111", "2222", "3333", M0002[1])
    ]
    assert codes == ["55", "55", "75", "75"]


def test_right_pin_resets_the_failure_counter(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00004")
    codes = [
        ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=pin, amount=1000))[0].get(39)
        for pin in ("1111", "2222", M0002[1], "3333", "4444", M0002[1])
    ]
    assert codes == ["55", "55", "00", "55", "55", "00"]


def test_unknown_terminal_gets_03_without_mac(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00004")
    t.profile.tid = "XXX00009"
    response, ok = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=10))
    assert response.get(39) == "03" and ok is None


def test_retransmission_returns_the_original_and_posts_once(
    switch_any_dialect: RunningSwitch,
) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00004")
    payload = t.purchase(pan=M0002[0], pin=M0002[1], amount=250_000)
    repeat_message = t.read(payload)
    repeat = t.sign(Message("0201", dict(repeat_message.fields)))
    first, second, third = talk(s.host, s.port, [payload, payload, repeat])
    r1, r2, r3 = (t.read(r) for r in (first, second, third))
    assert r1.get(39) == r2.get(39) == r3.get(39) == "00"
    assert r1.get(37) == r2.get(37) == r3.get(37) and r1.get(38) == r2.get(38) == r3.get(38)
    changed = dict(repeat_message.fields)
    changed[4] = "000000000777"
    conflict = t.read(talk(s.host, s.port, [t.sign(Message("0200", changed))])[0])
    assert conflict.get(39) == "94"
    balance = ask(t, s.host, s.port, t.balance(pan=M0002[0], pin=M0002[1]))[0]
    assert amounts(balance)[("GN", "02")] == 3_000_000 - 250_000


def test_key_exchange_puts_new_keys_in_force(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00001")
    old = PosTerminal.demo("HNR00001")
    response, ok = ask(t, s.host, s.port, t.network("101"))
    assert response.get(39) == "00" and ok is True
    t.accept_new_keys(response)
    assert t.profile.tak != old.profile.tak
    pan, pin = demo.CARDS[0].pan, demo.CARDS[0].pin
    assert ask(t, s.host, s.port, t.purchase(pan=pan, pin=pin, amount=100))[0].get(39) == "00"
    old.profile.stan = 500
    assert ask(old, s.host, s.port, old.purchase(pan=pan, pin=pin, amount=100))[0].get(39) == "63"
    # the keys are stored under the LMK: a fresh process on the same ledger accepts them
    stored = {r.id: r for r in s.app.store.terminals()}["HNR00001"]
    assert stored.tak.startswith("U") and t.profile.tak not in stored.tak


def test_dukpt_terminal_purchase(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00003")
    card = demo.CARDS[5]
    response, ok = ask(t, s.host, s.port, t.purchase(pan=card.pan, pin=card.pin, amount=5000))
    assert response.get(39) == "00" and ok is True
    response, ok = ask(t, s.host, s.port, t.purchase(pan=card.pan, pin="0000", amount=5000))
    assert response.get(39) == "55" and ok is True


def test_network_management(switch_any_dialect: RunningSwitch) -> None:
    s, t = switch_any_dialect, PosTerminal.demo("HNR00002")
    for code in ("001", "301", "002"):
        response, _ = ask(t, s.host, s.port, t.network(code))
        assert response.mti == "0810" and response.get(39) == "00" and response.get(70) == code


def test_binary2_framing(tmp_path: Path) -> None:  # one dialect is enough here
    with running_switch(make_config(tmp_path, framing="binary2")) as s:
        t = PosTerminal.demo("HNR00004")
        payload = t.purchase(pan=M0002[0], pin=M0002[1], amount=1)
        (raw,) = talk(s.host, s.port, [payload], framing=Framing.BINARY2)
        assert decode(raw, DIALECT).get(39) == "00"


def test_card_cache_is_bounded(tmp_path: Path) -> None:
    with running_switch(make_config(tmp_path, card_cache_max=1)) as s:
        t = PosTerminal.demo("HNR00004")
        for pan, pin in (M0002, ("6362144899564327", "9876"), M0002):
            response, _ = ask(t, s.host, s.port, t.purchase(pan=pan, pin=pin, amount=10))
            assert response.get(39) == "00"
        assert len(s.app.service._cards) == 1


def test_a_pin_change_after_the_card_was_cached_is_seen(tmp_path: Path) -> None:
    """The card cache holds the PVV used for PIN checks; a changed PVV is detected inside the
    ledger transaction and the PIN is verified again with the fresh card."""
    from sqlalchemy import update

    from ledger import schema

    with running_switch(make_config(tmp_path)) as s:
        t = PosTerminal.demo("HNR00004")
        assert (
            ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=10))[0].get(39)
            == "00"
        )  # the card is cached now
        store, hsm = s.app.store, s.app.hsm
        pvk = store.setting("pvk")
        assert pvk is not None
        new_pvv = hsm.generate_pvv(pvk, M0002[0], "7777", 1)
        with store.begin_write() as connection:
            connection.execute(
                update(schema.cards).where(schema.cards.c.member_id == "M0002").values(pvv=new_pvv)
            )
        assert (
            ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin="7777", amount=10))[0].get(39)
            == "00"
        )
        assert (
            ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=10))[0].get(39)
            == "55"
        )
