"""An early cutover: the day closes by hand, later requests count in the next business date."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from ledger import schema
from scripts.pos import PosTerminal
from switch.calendar import BusinessCalendar
from switch.cli import main

from conftest import make_config, running_switch
from helpers import M0002, ask


def test_requests_after_an_early_cutover_count_in_the_next_date(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    today = BusinessCalendar("Asia/Tehran", "00:00").business_date(datetime.now(UTC))
    tomorrow = today + timedelta(days=1)
    with running_switch(config) as s:
        t = PosTerminal.demo("HNR00004")
        before = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=100))[0]
        assert before.get(15) == today.strftime("%m%d")
        url = config.ledger_url
        assert (
            main(["settle", "cutover", "--now", "--ledger-url", url, "--data-dir", str(tmp_path)])
            == 0
        )
        assert (
            main(
                [
                    "settle",
                    "cutover",
                    "--now",
                    "--date",
                    today.isoformat(),
                    "--ledger-url",
                    url,
                    "--data-dir",
                    str(tmp_path),
                ]
            )
            == 1
        )  # closes once
        after = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=200))[0]
        assert after.get(39) == "00"
        assert after.get(15) == tomorrow.strftime("%m%d")
        with s.app.store.engine.connect() as connection:
            rows = connection.execute(
                select(schema.transactions.c.amount, schema.transactions.c.business_date)
                .where(schema.transactions.c.kind == "purchase")
                .order_by(schema.transactions.c.id)
            ).all()
        assert [(r.amount, date.fromisoformat(r.business_date)) for r in rows] == [
            (100, today),
            (200, tomorrow),
        ]


def test_cutover_is_an_outbox_event(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with running_switch(config) as s:
        assert (
            main(
                [
                    "settle",
                    "cutover",
                    "--now",
                    "--ledger-url",
                    config.ledger_url,
                    "--data-dir",
                    str(tmp_path),
                ]
            )
            == 0
        )
        with s.app.store.engine.connect() as connection:
            rows = connection.execute(
                select(schema.outbox.c.topic, schema.outbox.c.payload).where(
                    schema.outbox.c.topic == "settlement/cutover"
                )
            ).all()
    assert len(rows) == 1 and '"type": "cutover"' in rows[0].payload
