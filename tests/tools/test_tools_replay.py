"""Record a session with tracing on, replay it against a fresh switch, and catch differences."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest

from scripts.pos import PosClient, PosTerminal
from scripts.replay import ReplayOptions, parse_fields, parse_target, plan, replay
from scripts.trace import mask
from switch.cli import main
from switch.codec import Message, decode, encode
from switch.config import Config, TraceConfig
from switch.dialects import get_dialect
from switch.trace import TraceRecord, read_trace

from conftest import make_config, running_switch

DIALECT = get_dialect("shetab87")
M0002 = ("6362149173324546", "4321")
M0006 = ("6362144899564327", "9876")


def tracing_config(tmp_path: Path, trace_dir: Path) -> Config:
    """A switch config for a recording: its data under tmp_path/recorded, its trace in trace_dir."""
    return replace(
        make_config(tmp_path / "recorded"),
        trace=TraceConfig(enabled=True, directory=str(trace_dir)),
    )


def record_session(tmp_path: Path) -> Path:
    """Run a scripted session against a tracing switch; return the trace file."""
    trace_dir = tmp_path / "trace"
    config = tracing_config(tmp_path, trace_dir)
    terminal = PosTerminal.demo("HNR00004")
    with running_switch(config) as switch:

        async def session() -> None:
            client = await PosClient.connect(switch.host, switch.port)
            try:
                requests = [
                    terminal.network("301"),
                    terminal.balance(pan=M0002[0], pin=M0002[1]),
                    terminal.purchase(pan=M0002[0], pin=M0002[1], amount=1_000_000),
                    terminal.purchase(pan=M0006[0], pin=M0006[1], amount=250_000),
                    terminal.purchase(pan=M0002[0], pin="0000", amount=10),  # wrong PIN: 55
                    terminal.purchase(pan=M0002[0], pin=M0002[1], amount=5_000_000),  # 51
                    terminal.balance(pan=M0002[0], pin=M0002[1]),
                ]
                for payload in requests:
                    await client.request(payload)
                # Two in flight at once on the same connection.
                await client.send(terminal.purchase(pan=M0006[0], pin=M0006[1], amount=1))
                await client.send(terminal.network("301"))
                await client.receive()
                await client.receive()
            finally:
                await client.close()

        asyncio.run(session())
    (path,) = sorted(trace_dir.glob("trace-*.jsonl"))
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_session(tmp_path_factory.mktemp("record"))


def test_the_recorded_trace_pairs_every_request_with_its_answer(recorded: Path) -> None:
    records = read_trace(recorded)
    assert [r.direction for r in records].count("in") == 9
    assert [r.direction for r in records].count("out") == 9
    exchanges, orphans = plan(records, DIALECT)
    assert orphans == 0 and all(e.expected is not None for e in exchanges)
    codes = [decode(e.expected.payload, DIALECT).get(39) for e in exchanges if e.expected]
    assert codes == ["00", "00", "00", "00", "55", "51", "00", "00", "00"]


@pytest.mark.parametrize("restamp", [True, False], ids=["restamp", "as-recorded"])
def test_replay_against_a_fresh_switch_finds_no_difference(
    recorded: Path, tmp_path: Path, restamp: bool
) -> None:
    with running_switch(make_config(tmp_path)) as switch:
        options = ReplayOptions(switch.host, switch.port, restamp=restamp, fast=True)
        report = asyncio.run(replay(read_trace(recorded), options))
    assert report.differences == []
    assert report.summary()["sent"] == 9
    assert (report.matched, report.differing, report.missing, report.unexpected) == (9, 0, 0, 0)


def test_replay_command_reports_an_altered_answer_and_exits_non_zero(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = read_trace(recorded)
    altered = []
    changed = 0
    for record in records:
        message = decode(record.payload, DIALECT)
        if (
            record.direction == "out"
            and message.mti == "0210"
            and message.get(39) == "00"
            and not changed
        ):
            fields = dict(message.fields)
            fields[39] = "51"
            record = replace(record, payload=encode(Message(message.mti, fields), DIALECT))
            changed = record.line
        altered.append(record)
    path = tmp_path / "altered.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in altered))
    report_path = tmp_path / "report.json"
    with running_switch(make_config(tmp_path / "fresh")) as switch:
        code = main(
            [
                "--log-level",
                "WARNING",
                "replay",
                str(path),
                "--to",
                f"{switch.host}:{switch.port}",
                "--restamp",
                "--fast",
                "--report",
                str(report_path),
            ]
        )
    assert code == 1
    out, err = capsys.readouterr()
    assert "field 39: expected '51', got '00'" in out
    assert "summary: sent 9, matched 8, differing 1, missing 0, unexpected 0" in out
    assert "9/9 sent" in err, "progress on stderr"
    report = json.loads(report_path.read_text())
    assert report["summary"]["differing"] == 1
    (difference,) = report["differences"]
    assert difference["field"] == "39" and difference["expected"] == "51"
    assert difference["got"] == "00"


def test_missing_and_unexpected_answers_are_counted(recorded: Path, tmp_path: Path) -> None:
    records = read_trace(recorded)
    first_out = next(i for i, r in enumerate(records) if r.direction == "out")
    trimmed = records[:first_out] + records[first_out + 1 :]  # one answer forgotten
    orphan = TraceRecord(0, "out", records[first_out].payload, conn="elsewhere")
    with running_switch(make_config(tmp_path)) as switch:
        options = ReplayOptions(
            switch.host, switch.port, restamp=True, fast=True, no_answer_wait_s=0.2
        )
        report = asyncio.run(replay([*trimmed, orphan], options))
    assert report.unexpected == 1 and report.recorded_answers_without_request == 1
    assert report.matched == 8 and not report.clean


def test_masked_trace_replays_for_flow_shape(recorded: Path, tmp_path: Path) -> None:
    masked = tmp_path / "masked.jsonl"
    mask(recorded, masked, DIALECT)
    with running_switch(make_config(tmp_path)) as switch:
        options = ReplayOptions(
            switch.host,
            switch.port,
            fast=True,
            ignored=parse_fields("7,12,13,15,37,38,39,54,64,128,2,35"),
        )
        report = asyncio.run(replay(read_trace(masked), options))
    # Every request is still answered and matched by MTI, 11 and 41 (the answers are 30 now).
    assert report.missing == 0 and report.unexpected == 0 and report.sent == 9


def test_argument_parsing() -> None:
    assert parse_target("127.0.0.1:8583") == ("127.0.0.1", 8583)
    assert parse_fields("7, 11,") == frozenset({7, 11})
    with pytest.raises(ValueError):
        parse_target("localhost")
    with pytest.raises(ValueError):
        parse_fields("7,x")


def test_replay_against_a_switch_with_a_changed_discount_rule_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hotel purchase recorded under HOTEL20 (20 %), replayed where the rule gives 10 %."""
    trace_dir = tmp_path / "trace"
    config = tracing_config(tmp_path, trace_dir)
    hotel = PosTerminal.demo("HNR00001")
    with running_switch(config) as switch:

        async def session() -> None:
            client = await PosClient.connect(switch.host, switch.port)
            try:
                await client.request(
                    hotel.purchase(pan="6362147682085715", pin="1234", amount=10_000_000)
                )
            finally:
                await client.close()

        asyncio.run(session())
    (trace,) = sorted(trace_dir.glob("trace-*.jsonl"))
    changed = make_config(tmp_path / "changed")
    from sqlalchemy import update

    from hsm_sim.hsm import Hsm
    from hsm_sim.keys import Lmk
    from ledger import demo, schema
    from ledger.store import Store

    store = Store(changed.ledger_url)
    store.migrate()
    demo.load_demo(store, Hsm(lmk=Lmk.test()))
    with store.begin_write() as connection:
        connection.execute(
            update(schema.discount_rules)
            .where(schema.discount_rules.c.code == "HOTEL20")
            .values(percent=10)
        )
    store.close()
    with running_switch(changed) as switch:
        code = main(
            [
                "--log-level",
                "WARNING",
                "replay",
                str(trace),
                "--to",
                f"{switch.host}:{switch.port}",
                "--restamp",
                "--fast",
            ]
        )
    assert code == 1
    out = capsys.readouterr().out
    # 54: amount blocks (discount 1,000,000 instead of 2,000,000, charged 9,000,000)
    assert "field 54: expected" in out
    assert "000002000000" in out and "000001000000" in out
