"""/metrics after traffic, velocity alerts, the outbox without a broker, and the small parts."""

from __future__ import annotations

import json
import tracemalloc
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from events_support import M0002, M0006, ask, full_pan_runs, send_all, with_events
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ledger.outbox import EventRefused, Outbox, add_event, check_topic, pan_shaped_fields
from scripts.events import event_line, topic_filters
from scripts.pos import PosTerminal
from switch.codec import decode
from switch.config import Config, ConfigError, VelocityConfig, load_config
from switch.dialects import get_dialect
from switch.publish import Broker
from switch.service import Decision
from switch.velocity import VelocityMonitor

from conftest import make_config, running_switch

DIALECT = get_dialect("shetab87")


def scrape(address: tuple[str, int]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_after_traffic_match_what_was_sent_and_the_outbox_keeps_events(
    tmp_path: Path,
) -> None:
    config = with_events(make_config(tmp_path), None)  # no broker: events stay in the outbox
    with running_switch(config) as s:
        observability = s.app.observability
        assert observability is not None
        address = observability.metrics.serve("127.0.0.1", 0)
        try:
            t = PosTerminal.demo("HNR00004")
            payloads = [t.purchase(pan=M0006[0], pin=M0006[1], amount=1000 + i) for i in range(7)]
            payloads += [t.purchase(pan=M0002[0], pin="0000", amount=500)]  # 55
            payloads += [t.balance(pan=M0006[0], pin=M0006[1])]
            payloads += [t.network("301")]  # echo
            responses = send_all(s.host, s.port, payloads)
            # Pipelined: answers come back in any order; match them by STAN.
            by_stan = {decode(r, DIALECT).get(11): decode(r, DIALECT).get(39) for r in responses}
            codes = [by_stan[decode(p, DIALECT).get(11)] for p in payloads]
            assert codes == ["00"] * 7 + ["55", "00", "00"]
            m = scrape(address)
        finally:
            observability.metrics.close()
        outbox_rows = Outbox(s.app.store.engine).rows()

    def get(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert get("honar_requests_total", mti="0200", response_code="00") == 8
    assert get("honar_requests_total", mti="0200", response_code="55") == 1
    assert get("honar_requests_total", mti="0800", response_code="00") == 1
    assert get("honar_request_duration_seconds_count", flow="purchase") == 8
    assert get("honar_request_duration_seconds_count", flow="balance") == 1
    assert get("honar_request_duration_seconds_count", flow="network") == 1
    assert get("honar_requests_in_flight") == 0
    # Every financial request is one ledger job; the batches hold them all.
    assert get("honar_ledger_jobs_total") == 9
    assert get("honar_ledger_commit_batch_size_sum") == 9
    assert get("honar_ledger_commit_batch_size_count") == get("honar_ledger_batches_total")
    assert get("honar_ledger_commit_duration_seconds_count") == get("honar_ledger_batches_total")
    # PIN verified for the 9 card requests; MAC verified and generated for all 10 (echo: none).
    assert get("honar_hsm_duration_seconds_count", command="verify_pin_pvv") == 9
    assert get("honar_hsm_duration_seconds_count", command="verify_mac") == 9
    assert get("honar_hsm_duration_seconds_count", command="generate_mac") == 10
    # No broker: the switch ran, and the outbox keeps one event per decision.
    assert get("honar_outbox_unpublished") == 9 == len(outbox_rows)
    assert get("honar_outbox_oldest_age_seconds") > 0
    assert get("honar_events_publisher_connected") == 0
    assert get("honar_connections_open") in (0, 1)  # the last client may still be closing
    for row in outbox_rows:
        assert full_pan_runs(json.dumps(row["payload"])) == []


def test_velocity_alert_after_wrong_pins_is_an_event_with_the_masked_pan(tmp_path: Path) -> None:
    config = replace(
        with_events(make_config(tmp_path), None),
        velocity=VelocityConfig(pin_declines_max=1, pin_declines_window_s=60.0),
    )
    with running_switch(config) as s:
        t = PosTerminal.demo("HNR00004")
        first, _ = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin="0000", amount=100))
        observability = s.app.observability
        assert observability is not None
        assert first.get(39) == "55"
        assert Outbox(s.app.store.engine).rows("alerts/") == []
        second, _ = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin="0001", amount=100))
        assert second.get(39) == "55"
        _wait_written(s.loop, observability.emitter)
        alerts = Outbox(s.app.store.engine).rows("alerts/")
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["topic"] == "alerts/velocity"
    body = alert["payload"]
    assert body["type"] == "velocity_alert" and body["rule"] == "pin_declines"
    assert body["pan_masked"] == "636214******4546"
    assert body["count"] == 2 and body["limit"] == 1
    assert body["schema"] == 1 and body["event_id"]
    assert full_pan_runs(json.dumps(body)) == []


def _wait_written(loop: Any, emitter: Any) -> None:
    import asyncio

    asyncio.run_coroutine_threadsafe(emitter.drain(), loop).result(5)


# --- the parts ---------------------------------------------------------------------------------


def decision(pan: str, code: str, amount: int = 0, kind: str = "purchase") -> Decision:
    return Decision("0200", kind, "HNR00004", "000001", code, amount, pan, 0.001)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_velocity_pin_rule_counts_within_the_window_only() -> None:
    clock = FakeMonotonic()
    monitor = VelocityMonitor(
        VelocityConfig(pin_declines_max=2, pin_declines_window_s=60), monotonic=clock
    )
    assert monitor.check(decision(M0002[0], "55")) == []
    assert monitor.check(decision(M0002[0], "55")) == []
    clock.now += 61  # the first two fall out of the window
    assert monitor.check(decision(M0002[0], "55")) == []
    assert monitor.check(decision(M0002[0], "55")) == []
    (alert,) = monitor.check(decision(M0002[0], "55"))
    assert alert.rule == "pin_declines" and alert.payload["count"] == 3
    assert alert.payload["pan_masked"] == "636214******4546"
    assert monitor.check(decision(M0002[0], "55")) == []  # counting starts again


def test_velocity_amount_rule_over_an_hour_once_per_hour() -> None:
    clock = FakeMonotonic()
    monitor = VelocityMonitor(VelocityConfig(amount_hour_max=10_000), monotonic=clock)
    assert monitor.check(decision(M0002[0], "00", 6_000)) == []
    assert monitor.check(decision(M0002[0], "51", 6_000)) == []  # declines do not count
    clock.now += 3601
    assert monitor.check(decision(M0002[0], "00", 6_000)) == []  # the first one is too old
    (alert,) = monitor.check(decision(M0002[0], "00", 5_000))
    assert alert.rule == "amount_hour" and alert.payload["amount_total"] == 11_000
    assert monitor.check(decision(M0002[0], "00", 5_000)) == []  # once per hour
    assert monitor.check(decision(M0002[0], "00", 5_000, kind="refund")) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1500), st.integers(1, 10**9)), min_size=1, max_size=60))
def test_velocity_hour_total_is_the_sum_of_the_last_sixty_minutes(
    steps: list[tuple[float, int]],
) -> None:
    clock = FakeMonotonic()
    limit = 10**18  # no alert: only the running total is under test
    monitor = VelocityMonitor(VelocityConfig(amount_hour_max=limit), monotonic=clock)
    seen: list[tuple[int, int]] = []  # (minute, amount), the reference
    for step, amount in steps:
        clock.now += step
        assert monitor.check(decision(M0002[0], "00", amount)) == []
        minute = int(clock.now // 60)
        seen.append((minute, amount))
        (card,) = monitor._cards.values()
        assert card.total == sum(a for m, a in seen if m > minute - 60)
        assert card.minutes is not None and card.total == sum(card.minutes)
        assert card.last_minute == minute
        for m in range(minute - 59, minute + 1):  # each slot holds its own minute's amounts
            assert card.minutes[m % 60] == sum(a for n, a in seen if n == m)


def test_velocity_state_per_card_stays_small_after_a_busy_hour() -> None:
    # cards_max cards (100,000 by default) may be tracked at once: each must stay small even
    # with an approval in every minute of the hour and a wrong PIN (a dict of minute buckets
    # took some 7 KB per card, 0.7 GB at cards_max)
    clock = FakeMonotonic()
    monitor = VelocityMonitor(VelocityConfig(amount_hour_max=10**15), monotonic=clock)
    pans = [f"636214{i:010d}" for i in range(500)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _minute in range(60):
            for pan in pans:
                monitor.check(decision(pan, "00", 987_654_321))
            clock.now += 60
        monitor.check(decision(pans[0], "55"))
        per_card = (tracemalloc.get_traced_memory()[0] - before) / len(pans)
    finally:
        tracemalloc.stop()
    assert monitor.cards_tracked == len(pans)
    assert per_card < 1_200, per_card


def test_velocity_state_is_bounded_by_cards_max() -> None:
    monitor = VelocityMonitor(VelocityConfig(cards_max=3))
    pans = [f"636214{i:010d}" for i in range(5)]
    for pan in pans:
        monitor.check(decision(pan, "55"))
    assert monitor.cards_tracked == 3 and monitor.forgotten == 2


def test_pan_shaped_content_is_found_wherever_it_is() -> None:
    assert (
        pan_shaped_fields({"event_id": "0123456789012345ab", "pan_masked": "636214******4546"})
        == []
    )
    assert pan_shaped_fields({"a": {"b": [1, "x 6362149173324546 y"]}}) == ["$.a.b[1]"]
    assert pan_shaped_fields({"n": 6362149173324546}) == ["$.n"]
    assert pan_shaped_fields({"6362149173324546": 1}) == ["$[key]"]
    assert pan_shaped_fields({"event_id": "6362149173324546"}) == ["$.event_id"]
    assert pan_shaped_fields({"amount": 999_999_999_999}) == []  # 12 digits: an amount


def test_add_event_refuses_a_pan_and_a_bad_topic(tmp_path: Path) -> None:
    from ledger.store import Store

    store = Store(f"sqlite:///{tmp_path / 'o.db'}")
    store.migrate()
    now = datetime.now(UTC).isoformat()
    try:
        with store.transaction() as connection:
            event_id = add_event(
                connection, "settlement/cutover", {"type": "cutover", "time": now}, now
            )
        with pytest.raises(EventRefused), store.transaction() as connection:
            add_event(connection, "settlement/cutover", {"note": M0002[0]}, now)
        with pytest.raises(EventRefused):
            check_topic("honar/#")
        rows = Outbox(store.engine).rows()
        assert [r["payload"]["event_id"] for r in rows] == [event_id]
        assert rows[0]["payload"]["schema"] == 1
        outbox = Outbox(store.engine)
        assert outbox.lag().unpublished == 1
        assert outbox.mark_published([rows[0]["id"]], now) == 1
        assert outbox.lag().unpublished == 0 and outbox.unpublished(10) == []
    finally:
        store.close()


def test_events_config_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[events]\nbroker_url = "http://x"\n')
    with pytest.raises(ConfigError, match="broker_url"):
        load_config(path)
    path.write_text('[events]\nenvironment = "Prod Env"\n')
    with pytest.raises(ConfigError, match="environment"):
        load_config(path)
    path.write_text("[velocity]\npin_declines_max = 0\n")
    with pytest.raises(ConfigError, match="pin_declines_max"):
        load_config(path)
    path.write_text(
        '[events]\nbroker_url = "mqtts://broker:8884"\nenvironment = "prod"\n'
        "[metrics]\nenabled = true\nport = 9200\n"
    )
    config = load_config(path)
    assert Broker.parse(config.events.broker_url) == Broker("broker", 8884, True)
    assert config.metrics.port == 9200
    assert topic_filters(config, None) == ["honar/v1/prod/#"]


def test_tail_line_is_readable() -> None:
    line = event_line(
        "honar/v1/test/alerts/velocity",
        {"type": "velocity_alert", "rule": "pin_declines", "time": "T", "pan_masked": "6**4"},
    )
    assert line == "T  alerts/velocity  velocity_alert:pin_declines  -  -  -  -  6**4"
    assert Config().events.broker_url == ""
