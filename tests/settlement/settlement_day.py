"""A scripted business day over TCP, closed and exported once per test session.

The switch serves the demo data; the day has purchases with merchant- and program-funded
discounts, a pre-authorization with its completion, a refund, reversals (of a purchase, of a
refund, of a pre-authorization), declines and a balance inquiry. The day is then closed and
exported together with the demo disbursement date (2026-01-01), so that the second day's
manifest chains to the first.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ledger.demo import DEMO_DATE
from ledger.settlement import close_business_date, export_day, signing_key
from ledger.store import Store
from scripts.pos import PosClient, PosTerminal
from switch.calendar import BusinessCalendar
from switch.codec import Message
from switch.config import SwitchConfig

from conftest import make_config, running_switch

M0001 = ("6362147682085715", "1234")
M0002 = ("6362149173324546", "4321")
M0005 = ("6362140409390583", "0000")
M0006 = ("6362144899564327", "9876")
HOTEL, BOOKSTORE, MARKET = "HNR00001", "HNR00002", "HNR00004"
FIRST_DAY = date.fromisoformat(DEMO_DATE)
ZONE, CUTOVER = SwitchConfig().business_zone, SwitchConfig().cutover_time


@dataclass(frozen=True)
class Day:
    """Where the scripted day's ledger and files are."""

    root: Path
    ledger_url: str
    data_dir: Path
    out: Path
    business_date: date
    public_key: Path

    @property
    def folder(self) -> Path:
        """The scripted day's folder."""
        return self.out / self.business_date.isoformat()


def ask(terminal: PosTerminal, host: str, port: int, payload: bytes) -> Message:
    """One request on its own connection; the decoded response."""

    async def run() -> bytes:
        client = await PosClient.connect(host, port)
        try:
            return await client.request(payload, 10.0)
        finally:
            await client.close()

    response, _ok = terminal.check_response(asyncio.run(run()), payload)
    return response


def play(host: str, port: int) -> list[str]:
    """The scripted day; returns the response codes in order."""
    hotel, books, market = (PosTerminal.demo(t) for t in (HOTEL, BOOKSTORE, MARKET))
    codes: list[str] = []

    def go(t: PosTerminal, payload: bytes) -> Message:
        response = ask(t, host, port, payload)
        codes.append(response.get(39) or "")
        return response

    stay = go(hotel, hotel.purchase(pan=M0001[0], pin=M0001[1], amount=10_000_000))  # HOTEL20
    go(hotel, hotel.refund(pan=M0001[0], amount=5_000_000, original_rrn=stay.get(37) or ""))
    go(books, books.purchase(pan=M0005[0], pin=M0005[1], amount=2_000_000))  # BOOK10
    book2 = books.purchase(pan=M0005[0], pin=M0005[1], amount=1_000_000)
    sold = go(books, book2)
    back = books.refund(pan=M0005[0], amount=400_000, original_rrn=sold.get(37) or "")
    go(books, back)
    go(books, books.reversal(back))  # reversal of a refund
    hold = hotel.preauth(pan=M0001[0], pin=M0001[1], amount=6_000_000)
    go(hotel, hold)
    go(hotel, hotel.completion(hold, amount=6_500_000))
    hold2 = hotel.preauth(pan=M0001[0], pin=M0001[1], amount=1_000_000)
    go(hotel, hold2)
    go(hotel, hotel.reversal(hold2))  # a hold released: no money moves
    milk = market.purchase(pan=M0002[0], pin=M0002[1], amount=300_000)
    go(market, milk)
    go(market, market.reversal(milk))  # full reversal
    bread = market.purchase(pan=M0006[0], pin=M0006[1], amount=1_000_000)
    go(market, bread)
    go(market, market.reversal(bread, actual_amount=600_000, advice=True))  # partial advice
    go(market, market.purchase(pan=M0001[0], pin="0000", amount=1_000))  # wrong PIN: 55
    go(market, market.purchase(pan=M0005[0], pin=M0005[1], amount=1_000))  # book purse: 57
    go(market, market.balance(pan=M0002[0], pin=M0002[1]))
    return codes


EXPECTED_CODES = ["00"] * 14 + ["55", "57", "00"]


@functools.lru_cache(maxsize=1)
def scripted_day() -> Day:
    """Play, close and export the day (once per session)."""
    root = Path(tempfile.mkdtemp(prefix="honar-settle-"))
    config = make_config(root)
    with running_switch(config) as s:
        codes = play(s.host, s.port)
    assert codes == EXPECTED_CODES, codes
    today = BusinessCalendar(ZONE, CUTOVER).business_date(datetime.now(UTC))
    store = Store(config.ledger_url)
    try:
        store.migrate()
        key = signing_key(root)
        out = root / "settlement"
        for day in (FIRST_DAY, today):
            close_business_date(store, day, current=today + timedelta(days=1), now=_now())
            export_day(
                store,
                day,
                out,
                key=key,
                zone=ZONE,
                cutover=CUTOVER,
                now=_now(),
                software_version="test",
            )
    finally:
        store.close()
    from ledger.settlement import public_key_pem

    public = root / "settlement.pub"
    public.write_bytes(public_key_pem(key))
    return Day(root, config.ledger_url, root, out, today, public)


def _now() -> str:
    return datetime.now(UTC).isoformat()
