"""Operations of the Fund: disbursement from CSV, card issuance, purse expiry, synthetic members,
and the ``honar`` admin commands. Each test that moves money ends with debits equal to credits
and a whole journal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select, text

from hsm_sim.des import encrypt_tdes_ecb
from hsm_sim.hsm import Hsm, PinCheck
from hsm_sim.keys import Lmk
from hsm_sim.pinblock import encode_pinblock_iso_0
from ledger import demo, schema
from ledger.disburse import DisbursementError, disburse_file, parse_rows
from ledger.issuance import (
    IssuanceError,
    issue_card,
    luhn_valid,
    reset_pin,
)
from ledger.store import LedgerError, Store
from ledger.synthetic import (
    create_synthetic_members,
    synthetic_member_id,
    synthetic_pan,
    synthetic_pin,
)
from switch.cli import main

BUSINESS_DATE = "2026-05-01"
NOW = "2026-05-01T08:30:00+00:00"
TODAY = date(2026, 5, 1)
TPK_CLEAR = "0B4FA4EF4F6BE5E9B6C74F19862A15BA"


@pytest.fixture
def hsm() -> Hsm:
    return Hsm(lmk=Lmk.test())


@pytest.fixture
def store(tmp_path: Path, hsm: Hsm) -> Iterator[Store]:
    ledger = Store(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.migrate()
    demo.load_demo(ledger, hsm)
    yield ledger
    ledger.close()


def sound(store: Store) -> None:
    assert store.totals().balanced, store.totals()
    assert store.verify_journal() is None


def balance(store: Store, member: str, purse: str) -> int:
    return store.account_by_code(demo.purse_account_code(member, purse)).balance_credit


def csv_file(tmp_path: Path, body: str, name: str = "batch.csv") -> str:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return str(path)


def disburse(store: Store, path: str, batch_id: str = "B1", program: str = "MOC-BOOK") -> bool:
    report = disburse_file(
        store, path, program_code=program, batch_id=batch_id, business_date=BUSINESS_DATE, now=NOW
    )
    return report.applied


# --- disbursement ----------------------------------------------------------------------------


def test_disbursement_lists_every_error_with_its_place_and_applies_nothing(
    store: Store, tmp_path: Path
) -> None:
    before = store.totals()
    path = csv_file(
        tmp_path,
        "member_id,amount\nM0001,100\nM0002,1.5\nNOPE,5\nM0001,7\nM0003\nM0004,-3\nM0005,0\n",
    )
    with pytest.raises(DisbursementError) as caught:
        disburse(store, path)
    places = [(p.line, p.column, p.message) for p in caught.value.problems]
    assert places == [
        (3, 7, "amount '1.5' is not a whole number of rials"),
        (4, 1, "unknown member 'NOPE'"),
        (5, 1, "member M0001 appears again (first on line 2)"),
        (6, 1, "expected 2 columns, got 1"),
        (7, 7, "amount '-3' is not a whole number of rials"),
        (8, 7, "amount 0 is not 1-10,000,000,000,000"),
    ]
    assert str(caught.value.problems[0]).startswith(f"{path}:3:7: ")
    assert store.totals() == before
    assert store.disbursement_batch("B1") is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (1, 1, "empty file")),
        (b"member_id,amount\n", (2, 1, "no rows")),
        (b"who,what\nM0001,5\n", (1, 1, "header must be")),
        (b"member_id,amount\nM0001,5\nM0002,\xff\n", (3, 7, "not UTF-8")),
    ],
)
def test_disbursement_refuses_empty_headerless_and_undecodable_files(
    body: bytes, expected: tuple[int, int, str]
) -> None:
    _rows, problems = parse_rows(body, "f.csv", lambda members: members)
    assert problems
    line, column, message = expected
    assert (problems[0].line, problems[0].column) == (line, column)
    assert message in problems[0].message


def test_disbursement_is_idempotent_by_batch_id(store: Store, tmp_path: Path) -> None:
    path = csv_file(tmp_path, "\ufeffmember_id,amount\nM0001,1000\nM0005,2000\n")
    assert disburse(store, path) is True
    assert balance(store, "M0001", "BK") == 1000  # purse created by the disbursement
    assert balance(store, "M0005", "BK") == 5_000_000 + 2000
    after = store.totals()
    assert disburse(store, path) is False
    assert store.totals() == after
    other = csv_file(tmp_path, "member_id,amount\nM0001,999\n", "other.csv")
    with pytest.raises(LedgerError, match="another file"):
        disburse(store, other)
    assert store.totals() == after
    sound(store)


def test_disbursement_all_or_nothing_when_the_store_refuses(store: Store, tmp_path: Path) -> None:
    # M0001's TR purse is funded by MOC-TOUR: paying MOC-BOOK into it must fail as a whole.
    path = csv_file(tmp_path, "member_id,amount\nM0005,10\nM0001,10\n")
    before = store.totals()
    with pytest.raises(LedgerError, match="funded by MOC-TOUR"):
        disburse_file(
            store,
            path,
            program_code="MOC-BOOK",
            batch_id="B9",
            business_date=BUSINESS_DATE,
            now=NOW,
            purse_code="TR",
        )
    assert store.totals() == before
    assert store.disbursement_batch("B9") is None
    sound(store)


def test_disbursement_of_1000_rows_hash_chains_every_transfer(store: Store, tmp_path: Path) -> None:
    members = [(f"X{i:05d}", f"Member {i}") for i in range(1000)]
    for member_id, name in members:
        store.add_member(member_id, name)
    lines = "".join(f"{m},{i + 1}\n" for i, (m, _n) in enumerate(members))
    head_before, _hash = store.journal_head()
    seen: list[tuple[int, int]] = []
    report = disburse_file(
        store,
        csv_file(tmp_path, "member_id,amount\n" + lines),
        program_code="FUND-GEN",
        batch_id="GEN-1000",
        business_date=BUSINESS_DATE,
        now=NOW,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert report.applied
    assert report.record.rows == 1000
    assert report.record.purses_created == 1000
    assert report.record.amount_total == 1000 * 1001 // 2
    assert balance(store, "X00999", "GN") == 1000
    assert store.journal_head()[0] == head_before + 1000
    assert seen[-1] == (1000, 1000)
    sound(store)


# --- issuance --------------------------------------------------------------------------------


def pin_block(hsm: Hsm, pan: str, pin: str) -> tuple[str, bytes]:
    tpk = hsm.import_clear_key(TPK_CLEAR, "002")
    clear_block = encode_pinblock_iso_0(pin, pan)
    return tpk, encrypt_tdes_ecb(bytes.fromhex(TPK_CLEAR), clear_block)


def test_issued_card_verifies_its_pin_and_keeps_no_clear_pan_or_cvv(store: Store, hsm: Hsm) -> None:
    store.add_member("M0100", "Sara Jafari")
    card = issue_card(store, hsm, "M0100", "4826", today=TODAY)
    assert card.pan.startswith("636214")
    assert len(card.pan) == 16
    assert luhn_valid(card.pan)
    assert card.pan[6] != "9"  # the synthetic range stays free
    assert card.expiry == "3105"
    assert card.service_code == "101"
    assert re.fullmatch(r"\d{3}", card.cvv2)
    assert card.pan not in repr(card)
    stored = store.find_card(hsm.pan_hash(card.pan))
    assert stored is not None
    assert stored.member_id == "M0100"
    assert stored.pan_masked == card.pan[:6] + "******" + card.pan[-4:]
    pvk = store.setting("pvk")
    assert pvk is not None
    tpk, block = pin_block(hsm, card.pan, "4826")
    assert hsm.verify_pin_pvv(tpk, pvk, block, card.pan, 1, stored.pvv) is PinCheck.OK
    _tpk, wrong = pin_block(hsm, card.pan, "4827")
    assert hsm.verify_pin_pvv(tpk, pvk, wrong, card.pan, 1, stored.pvv) is PinCheck.MISMATCH
    # Nothing in the database holds the clear PAN or a CVV next to it.
    dump = dump_database(store)
    assert card.pan not in dump
    assert card.pan[6:] not in dump
    cvk = store.setting("cvk")
    assert cvk is not None
    assert hsm.generate_cvv(cvk, card.pan, card.expiry, "000") == card.cvv2


def dump_database(store: Store) -> str:
    parts: list[str] = []
    with store.engine.connect() as connection:
        for table in schema.metadata.sorted_tables:
            if not store.engine.dialect.has_table(connection, table.name):
                continue
            for row in connection.execute(select(table)):
                parts.extend(repr(value) for value in row)
    return "\n".join(parts)


def test_issuance_refuses_bad_pin_expiry_and_member(store: Store, hsm: Hsm) -> None:
    with pytest.raises(IssuanceError, match="--pin"):
        issue_card(store, hsm, "M0001", "12a4", today=TODAY)
    with pytest.raises(IssuanceError, match="--expiry"):
        issue_card(store, hsm, "M0001", "1234", today=TODAY, expiry="2513")
    with pytest.raises(IssuanceError, match="expired already"):
        issue_card(store, hsm, "M0001", "1234", today=TODAY, expiry="2604")
    with pytest.raises(IssuanceError, match="no such member"):
        issue_card(store, hsm, "M9999", "1234", today=TODAY)


def test_reset_pin_changes_the_pvv_and_clears_failures(store: Store, hsm: Hsm) -> None:
    pan = "6362147682085715"  # M0001, PIN 1234
    card = store.find_card(hsm.pan_hash(pan))
    assert card is not None
    store.update_card(card.id, pin_failures=2)
    reset_pin(store, hsm, pan, "5555")
    after = store.find_card(hsm.pan_hash(pan))
    assert after is not None
    assert after.pin_failures == 0
    pvk = store.setting("pvk")
    assert pvk is not None
    assert hsm.generate_pvv(pvk, pan, "5555", 1) == after.pvv


# --- purse expiry ----------------------------------------------------------------------------


def test_expired_purses_go_back_to_their_program_once(store: Store) -> None:
    tour = store.account_by_code(demo.program_account_code("MOC-TOUR")).credits_posted
    assert store.expire_purses("2027-03-20", business_date=BUSINESS_DATE, now=NOW) == []
    expired = store.expire_purses("2027-03-21", business_date=BUSINESS_DATE, now=NOW)
    assert {(e.member_id, e.purse_code, e.amount) for e in expired} == {
        ("M0001", "TR", 20_000_000),
        ("M0005", "BK", 5_000_000),
    }
    assert balance(store, "M0001", "TR") == 0
    assert balance(store, "M0001", "GN") == 50_000_000  # a general purse never expires
    after = store.account_by_code(demo.program_account_code("MOC-TOUR")).credits_posted
    assert after == tour + 20_000_000
    totals = store.totals()
    assert store.expire_purses("2027-03-21", business_date=BUSINESS_DATE, now=NOW) == []
    assert store.expire_purses("2028-01-01", business_date=BUSINESS_DATE, now=NOW) == []
    assert store.totals() == totals
    sound(store)


# --- synthetic members -----------------------------------------------------------------------


def test_synthetic_members_follow_the_formula_and_are_funded(store: Store, hsm: Hsm) -> None:
    result = create_synthetic_members(store, hsm, 300, business_date=BUSINESS_DATE, now=NOW)
    assert (result.created, result.existing) == (300, 0)
    assert synthetic_pan(1) == "6362149000000012"
    assert synthetic_pin(10_007) == "0007"
    pvk = store.setting("pvk")
    assert pvk is not None
    for i in (1, 150, 300):
        pan = synthetic_pan(i)
        assert luhn_valid(pan)
        card = store.find_card(hsm.pan_hash(pan))
        assert card is not None
        assert (card.member_id, card.expiry, card.service_code, card.state) == (
            synthetic_member_id(i),
            "2812",
            "101",
            "active",
        )
        assert (card.daily_amount_max, card.daily_count_max) == (10_000_000_000, 1_000_000)
        assert hsm.generate_pvv(pvk, pan, f"{i % 10000:04d}", 1) == card.pvv
        assert balance(store, synthetic_member_id(i), "GN") == 100_000_000
    again = create_synthetic_members(store, hsm, 310, business_date=BUSINESS_DATE, now=NOW)
    assert (again.created, again.existing) == (10, 300)
    assert balance(store, synthetic_member_id(310), "GN") == 100_000_000
    assert balance(store, synthetic_member_id(1), "GN") == 100_000_000
    sound(store)


# --- the honar commands ----------------------------------------------------------------------


def honar(tmp_path: Path, *argv: str) -> int:
    return main([*argv[:2], *argv[2:], "--ledger-url", f"sqlite:///{tmp_path / 'cli.db'}"])


def test_admin_commands_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert honar(tmp_path, "members", "add", "--id", "M0100", "--name", "Sara Jafari") == 0
    assert honar(tmp_path, "members", "add", "--id", "M0100", "--name", "Again") == 2
    assert "exists already" in capsys.readouterr().err
    assert honar(tmp_path, "cards", "issue", "--member", "M0100", "--pin", "1234") == 0
    out = capsys.readouterr().out
    pan = re.search(r"PAN\s+(\d{16})", out)
    assert pan is not None
    assert re.search(r"CVV2\s+\d{3}", out)
    assert honar(tmp_path, "cards", "block", "--pan", pan.group(1)) == 0
    assert honar(tmp_path, "cards", "unblock", "--pan", pan.group(1)) == 0
    assert honar(tmp_path, "cards", "reset-pin", "--pan", pan.group(1), "--pin", "9999") == 0
    assert honar(tmp_path, "cards", "block", "--pan", "6362140000000000") == 2
    assert "no such card" in capsys.readouterr().err
    grant = csv_file(tmp_path, "member_id,amount\nM0100,700\n")
    argv = ("programs", "disburse", "--program", "MOC-BOOK", "--file", grant, "--batch-id", "G1")
    assert honar(tmp_path, *argv) == 0
    assert "1 members paid 700 IRR" in capsys.readouterr().out
    assert honar(tmp_path, *argv) == 0
    assert "nothing changed" in capsys.readouterr().out
    bad = csv_file(tmp_path, "member_id,amount\nM0100,7x\n", "bad.csv")
    assert honar(tmp_path, "programs", "disburse", "--program", "MOC-BOOK", "--file", bad,
                 "--batch-id", "G2") == 2  # fmt: skip
    assert f"{bad}:2:7: amount '7x'" in capsys.readouterr().err
    assert honar(tmp_path, "members", "show", "M0100") == 0
    shown = capsys.readouterr().out
    assert "BK" in shown
    assert pan.group(1) not in shown
    assert honar(tmp_path, "purses", "expire", "--date", "2027-03-21") == 0
    assert "3 purse(s) expired" in capsys.readouterr().out
    assert honar(tmp_path, "demo", "synthetic", "--members", "20") == 0
    assert "20 created" in capsys.readouterr().out
    assert honar(tmp_path, "members", "list", "--limit", "2") == 0
    assert "2 shown of 27" in capsys.readouterr().out
    check = Store(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        sound(check)
        with check.engine.connect() as connection:
            assert connection.execute(text("select count(*) from cards")).scalar() == 27
    finally:
        check.close()
