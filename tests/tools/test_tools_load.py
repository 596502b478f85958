"""The load generator against a running switch, and its building blocks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from scripts.load import (
    LoadResult,
    build_requests,
    check_target,
    drive,
    luhn_digit,
    peek_fields,
    synthetic_member,
)
from scripts.pos import PosTerminal
from switch.cli import main
from switch.codec import Message, decode, encode
from switch.dialects import get_dialect
from switch.requests import luhn_valid

from conftest import RunningSwitch

DIALECT = get_dialect("shetab87")


def test_closed_loop_run_is_all_approved_with_sane_percentiles(
    switch_sqlite: RunningSwitch,
) -> None:
    requests = build_requests(500, stan_start=1)
    result = asyncio.run(
        drive(switch_sqlite.host, switch_sqlite.port, requests, connections=4, in_flight=8)
    )
    assert result.sent == result.answered == result.approved == 500
    assert result.timed_out == 0 and result.errors == []
    p50, p90, p99, p999, top = (result.percentile_ms(p) for p in (50, 90, 99, 99.9, 100))
    assert 0 < p50 <= p90 <= p99 <= p999 <= top < 10_000
    assert sum(result.per_second) == 500
    assert sum(n for _, n in result.histogram()) == 500
    assert result.throughput > 0
    assert switch_sqlite.app.store.totals().balanced


def test_open_loop_keeps_the_offered_rate(switch_sqlite: RunningSwitch) -> None:
    requests = build_requests(100, stan_start=5000)
    result = asyncio.run(
        drive(
            switch_sqlite.host,
            switch_sqlite.port,
            requests,
            connections=2,
            rate=100,
            duration_s=1.0,
        )
    )
    assert result.mode == "open" and result.sent == 100 and result.answered == 100
    assert result.approved == 100


def test_load_command_prints_json(
    switch_sqlite: RunningSwitch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--log-level",
            "WARNING",
            "load",
            "--port",
            str(switch_sqlite.port),
            "--count",
            "50",
            "--in-flight",
            "4",
            "--connections",
            "2",
            "--json",
        ]
    )
    figures = json.loads(capsys.readouterr().out)
    assert code == 0
    assert figures["approved"] == 50 and figures["codes"] == {"00": 50}
    assert set(figures["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}


def test_requests_have_distinct_stans_and_verify_as_purchases() -> None:
    requests = build_requests(20, stan_start=999_990)
    messages = [decode(r, DIALECT) for r in requests]
    stans = [m.get(11) for m in messages]
    assert len(set(stans)) == 20 and "000001" in stans  # wrapped past 999999
    assert {m.get(2) for m in messages} == {"6362144899564327"}
    assert {m.get(41) for m in messages} == {"HNR00004"}


def test_synthetic_members_follow_the_demo_data_formula() -> None:
    pan, pin = synthetic_member(123_456)
    assert pan.startswith("636214900123456") and len(pan) == 16 and luhn_valid(pan)
    assert pin == "3456"
    assert luhn_digit("636214489956432") == "7"
    requests = build_requests(3, members=2)
    assert [decode(r, DIALECT).get(2) for r in requests] == [
        synthetic_member(1)[0],
        synthetic_member(2)[0],
        synthetic_member(1)[0],
    ]
    with pytest.raises(ValueError):
        synthetic_member(0)


def test_peek_fields_agrees_with_the_codec() -> None:
    terminal = PosTerminal.demo("HNR00004")
    payloads = [
        terminal.purchase(pan="6362144899564327", pin="9876", amount=1),
        terminal.network("301"),
        encode(
            Message("0210", {2: "6362144899564327", 11: "000042", 39: "51", 90: "0" * 42}), DIALECT
        ),
    ]
    for payload in payloads:
        message = decode(payload, DIALECT)
        wanted = frozenset({11, 39} & set(message.fields) or {11})
        assert peek_fields(payload, DIALECT, wanted) == {n: message.fields[n] for n in wanted}


def test_only_loopback_targets_unless_insisted() -> None:
    check_target("127.0.0.1", False)
    check_target("::1", False)
    check_target("localhost", False)
    with pytest.raises(ValueError, match="loopback"):
        check_target("10.1.2.3", False)
    check_target("10.1.2.3", True)


def test_limits_are_enforced(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_requests(0)
    with pytest.raises(ValueError):
        build_requests(1_000_000)
    with pytest.raises(ValueError, match="duration"):
        asyncio.run(drive("127.0.0.1", 1, [b"x"], duration_s=0))
    empty = LoadResult("closed", 1, 1, None, 0, 0.0)
    assert empty.percentile_ms(99) == 0.0 and empty.throughput == 0.0
