"""Discount rule uses counted inside one batch: the limit holds when the uses share a batch.

HOTEL20 (demo data) gives 20 % at the ITTO hotel, 4 uses per member per calendar month. The
engine counts a member's uses in SQL once per batch and then keeps the count itself, so these
tests put every request of interest into one batch (the commit thread is held by a gate job
while they queue) and check the count against what the rule allows.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsm_sim.hsm import Hsm
from hsm_sim.keys import Lmk
from ledger import demo
from ledger.domain import AuthorizationJob, CardSnapshot, JobResult, Outcome, TransactionKey
from ledger.engine import GroupCommitter
from ledger.store import Store
from scripts.pos import PosTerminal
from switch.app import build_directory, load_rules
from switch.authorize import PinResult
from switch.calendar import BusinessCalendar
from switch.flows import FlowContext
from switch.requests import FinancialRequest, parse_request, request_digest
from switch.service import _decide, flow_kind

from conftest import fresh_postgres_database

PAN, PIN = "6362147682085715", "1234"  # M0001: GN 50,000,000; TR 20,000,000
HOTEL_TERMINAL = "HNR00001"
AMOUNT = 1_000_000
TIMEOUT_S = 30.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Hsm]]:
    """The demo ledger on SQLite, then on a fresh PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'l.db'}"
        else:
            url = stack.enter_context(fresh_postgres_database())
        hsm = Hsm(lmk=Lmk.test())
        store = Store(url)
        store.migrate()
        demo.load_demo(store, hsm)
        yield store, hsm
        store.close()


class Gate:
    """A job that holds the commit thread, so the jobs submitted after it form one batch."""

    def __init__(self, committer: GroupCommitter) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()

        def decide(_view: CardSnapshot | None) -> Outcome:
            self.entered.set()
            assert self.opened.wait(TIMEOUT_S)
            return Outcome("00")

        key = TransactionKey("GATE0001", secrets.token_hex(3), "0501083000")
        committer.submit(
            AuthorizationJob(
                key=key,
                mti="0200",
                kind="balance",
                processing_code="310000",
                request_digest="gate",
                card_id=None,
                merchant_id=None,
                pan_masked=None,
                business_date=datetime.now(UTC).date().isoformat(),
                now=datetime.now(UTC).isoformat(),
                decide=lambda view: decide(None),
            )
        )
        assert self.entered.wait(TIMEOUT_S)


class Hotel:
    """Builds the ledger jobs the switch would submit for requests at the hotel terminal."""

    def __init__(self, store: Store, hsm: Hsm) -> None:
        self.terminal = PosTerminal.demo(HOTEL_TERMINAL)
        directory = build_directory(store)
        terminal = directory.terminal(HOTEL_TERMINAL)
        assert terminal is not None
        merchant = directory.merchant(terminal.merchant_id)
        card = store.find_card(hsm.pan_hash(PAN))
        assert merchant is not None and card is not None
        self.merchant, self.card = merchant, card
        now = datetime.now(UTC)
        self.context = FlowContext(
            today=BusinessCalendar("Asia/Tehran", "00:00").business_date(now),
            now=now,
            pin=PinResult.OK,
            merchant=merchant,
            rules=load_rules(store),
            program_accounts=store.program_accounts(),
        )

    def purchase(self) -> bytes:
        return self.terminal.purchase(pan=PAN, pin=PIN, amount=AMOUNT, expiry="2812")

    def job(self, payload: bytes) -> AuthorizationJob:
        request = parse_request(self.terminal.read(payload))
        assert isinstance(request, FinancialRequest)
        kind = flow_kind(request)
        assert kind is not None
        now = self.context.now
        original_card = self.card.id
        return AuthorizationJob(
            key=TransactionKey(request.tid, request.stan, request.transmission),
            mti=request.base_mti,
            kind=kind,
            processing_code=request.processing_code,
            request_digest=request_digest(request.message),
            card_id=original_card,
            merchant_id=self.merchant.id,
            pan_masked="636214******5715",
            business_date=self.context.today.isoformat(),
            now=now.isoformat(),
            decide=functools.partial(
                _decide, kind, request, self.context, (self.card.pvki, self.card.pvv)
            ),
        )


def discounted(result: JobResult) -> bool:
    return "DSC" in result.response_fields.get(48, "")


def run_in_one_batch(store: Store, jobs: list[AuthorizationJob]) -> list[JobResult]:
    committer = GroupCommitter(store)
    committer.start()
    try:
        gate = Gate(committer)
        futures = [committer.submit(job) for job in jobs]
        gate.opened.set()
        return [future.result(TIMEOUT_S) for future in futures]
    finally:
        committer.stop()


def test_six_hotel_payments_in_one_batch_get_four_discounts(
    ledger: tuple[Store, Hsm],
) -> None:
    store, hsm = ledger
    hotel = Hotel(store, hsm)
    results = run_in_one_batch(store, [hotel.job(hotel.purchase()) for _ in range(6)])
    assert [r.response_code for r in results] == ["00"] * 6
    assert [discounted(r) for r in results] == [True] * 4 + [False] * 2


def test_a_reversal_in_the_batch_gives_its_use_back(ledger: tuple[Store, Hsm]) -> None:
    store, hsm = ledger
    hotel = Hotel(store, hsm)
    first = [hotel.purchase() for _ in range(4)]
    before = run_in_one_batch(store, [hotel.job(p) for p in first])
    assert all(discounted(r) for r in before)
    # One batch: a purchase (no use left), the full reversal of the first, two purchases
    # (the first of them gets the use the reversal gave back, the second does not).
    reversal = hotel.terminal.reversal(first[0])
    jobs = [hotel.job(hotel.purchase()), hotel.job(reversal)]
    jobs += [hotel.job(hotel.purchase()) for _ in range(2)]
    results = run_in_one_batch(store, jobs)
    assert [r.response_code for r in results] == ["00"] * 4
    assert [discounted(r) for r in results] == [False, False, True, False]


def test_a_partial_reversal_keeps_the_use(ledger: tuple[Store, Hsm]) -> None:
    store, hsm = ledger
    hotel = Hotel(store, hsm)
    first = [hotel.purchase() for _ in range(4)]
    run_in_one_batch(store, [hotel.job(p) for p in first])
    partial = hotel.terminal.reversal(first[0], actual_amount=AMOUNT // 2)
    results = run_in_one_batch(store, [hotel.job(partial), hotel.job(hotel.purchase())])
    assert [r.response_code for r in results] == ["00", "00"]
    assert not discounted(results[1])
