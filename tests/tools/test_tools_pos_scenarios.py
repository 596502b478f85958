"""The POS simulator's scripted scenarios (``honar pos run``) and interactive mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from scripts.pos import PosTerminal
from scripts.pos_scenario import ScenarioError, Session, load_scenario, parse_scenario, run_scenario
from switch.cli import main
from switch.codec import Message
from switch.dialects.base import Framing
from switch.framing import Framer

from conftest import make_config, running_switch

ROOT = Path(__file__).resolve().parents[2]
HOTEL = ROOT / "scripts" / "scenarios" / "day-at-the-hotel.toml"
M0002 = ("6362149173324546", "4321")


def test_the_example_scenario_is_shipped_with_the_scripts_package() -> None:
    found = resources.files("scripts").joinpath("scenarios", "day-at-the-hotel.toml")
    assert found.is_file()
    scenario = load_scenario("day-at-the-hotel")  # a bundled scenario by name
    assert scenario.terminal == "HNR00001"
    assert [s.kind for s in scenario.steps][-1] == "reconcile"


@pytest.mark.parametrize("dialect", ["shetab87", "shetab93"])
def test_day_at_the_hotel_meets_every_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dialect: str
) -> None:
    state = tmp_path / "pos-state.json"
    with running_switch(make_config(tmp_path, dialect=dialect)) as switch:
        code = main(
            [
                *("pos", "run", str(HOTEL), "--port", str(switch.port)),
                *("--state", str(state), "--dialect", dialect),
            ]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "all expectations met (11 steps)" in out
    assert "UNMET" not in out
    (end_of_day,) = [line for line in out.splitlines() if line.startswith("end-of-day")]
    assert "0500 reconciliation" in end_of_day
    assert "-> 0510 00 approved" in end_of_day
    assert "debits 2 / 34,000,000, credits 1 / 500,000" in end_of_day
    (dinner,) = [line for line in out.splitlines() if line.startswith("dinner ")]
    assert "charged 1,600,000" in dinner and "HOTEL20" in dinner
    assert "HNR00001" in state.read_text()  # the exchanged keys and STAN are kept


def test_unmet_expectations_are_listed_by_step_and_exit_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "wrong.toml"
    scenario.write_text(
        f"""
terminal = "HNR00004"

[[step]]
id = "coffee"
kind = "purchase"
pan = "{M0002[0]}"
pin = "0000"
amount = 50_000
expect = "00"

[[step]]
id = "tea"
kind = "purchase"
pan = "{M0002[0]}"
pin = "{M0002[1]}"
amount = 40_000
expect = "00"
expect_discount = "BOOK10"

[[step]]
id = "eod"
kind = "reconcile"
debits_count = 7
expect = "00"
"""
    )
    with running_switch(make_config(tmp_path)) as switch:
        code = main(["pos", "run", str(scenario), "--port", str(switch.port), "--no-state"])
    out = capsys.readouterr().out
    assert code == 1
    summary = out.split("unmet expectation(s)", 1)[1]
    assert "step 1 'coffee' (line 4): expected code 00, got 55 (incorrect PIN)" in summary
    assert "step 2 'tea' (line 12): expected discount rule BOOK10, got (none)" in summary
    assert "step 3 'eod' (line 21): expected code 00, got 95" in summary
    assert "3 unmet expectation(s) in 3 steps" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[step]]\nkind = "echo"\nexpect = 00\n', "not valid TOML: "),
        (
            '[[step]]\nkind = "echo"\n\n[[step]]\nid = "x"\nkind = "purchse"\n',
            "step 2 ('x'), line 4: unknown step kind 'purchse'",
        ),
        (
            '[[step]]\nid = "a"\nkind = "echo"\n\n[[step]]\nid = "back"\nkind = "refund"\n'
            'of = "nope"\n',
            "step 2 ('back'), line 5: 'of' names 'nope', which is not the id of an earlier step",
        ),
        (
            '[[step]]\nid = "a"\nkind = "echo"\n\n[[step]]\nkind = "reversal"\nof = "a"\n',
            "step 2, line 5: a reversal must be of a completion or preauth or purchase or refund",
        ),
        (
            '[[step]]\nkind = "purchase"\npan = "6362149173324546"\n',
            "step 1, line 1: a purchase step needs 'amount'",
        ),
        (
            '[[step]]\nkind = "echo"\namount = 5\n',
            "step 1, line 1: a echo step takes no 'amount'",
        ),
        ('name = "nothing"\n', "no steps"),
    ],
)
def test_malformed_scenario_files_name_file_step_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_bad_toml_names_the_line_and_the_command_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[step]]\nkind = "echo"\nexpect = 00\n')
    assert main(["pos", "run", str(path), "--no-state"]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "not valid TOML" in error and "line 3" in error


def test_a_request_without_answer_is_followed_by_a_reversal_advice() -> None:
    """Against a server that accepts and never answers: the 0200 times out, a 0420 for it
    follows; an echo that times out gets no advice."""
    received: list[Message] = []
    terminal = PosTerminal.demo("HNR00004")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer(Framing.ASCII4, frame_size_max=9999)
        while data := await reader.read(65536):
            framer.receive_data(data)
            while (payload := framer.next_frame()) is not None:
                received.append(terminal.read(payload))
        writer.close()

    scenario = parse_scenario(
        f"""
[[step]]
id = "lost"
kind = "purchase"
pan = "{M0002[0]}"
pin = "{M0002[1]}"
amount = 70_000
expect = "00"

[[step]]
kind = "echo"
""",
        "silent.toml",
    )

    async def run() -> list[str]:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        session = Session(terminal, "127.0.0.1", port, timeout_s=0.3)
        try:
            result = await run_scenario(scenario, session)
        finally:
            await session.close()
            server.close()
            await server.wait_closed()
        return result.unmet

    unmet = asyncio.run(run())
    assert [m.mti for m in received] == ["0200", "0420", "0800"]
    purchase, advice, _ = received
    assert advice.fields[90][:20] == "0200" + purchase.fields[11] + purchase.fields[7]
    assert advice.fields[4] == purchase.fields[4]
    assert unmet == [
        "step 1 'lost' (line 2): no answer within 0.3 s (reversal advice sent, answered not)"
    ]


def test_interactive_mode_driven_through_a_pipe(tmp_path: Path) -> None:
    commands = f"purchase {M0002[0]} {M0002[1]} 1000000\nbalance {M0002[0]} {M0002[1]}\n"
    commands += "frobnicate\neod\nquit\necho\n"
    with running_switch(make_config(tmp_path)) as switch:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "switch.cli", "--log-level", "WARNING"),
                *("pos", "interactive", "--port", str(switch.port), "--no-state"),
            ],
            input=commands,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    purchase = next(line for line in lines if line.startswith("purchase "))
    assert "0200 purchase" in purchase and "-> 0210 00 approved" in purchase
    assert "charged 1,000,000" in purchase
    balance = next(line for line in lines if line.startswith("balance "))
    assert "-> 0210 00 approved" in balance and "available 2,000,000" in balance
    assert "error: unknown command 'frobnicate'" in done.stdout
    eod = next(line for line in lines if line.startswith("eod "))
    assert "-> 0510 00 approved" in eod
    assert "39  response code" in done.stdout  # the decoded answer is shown field by field
    assert not any(line.startswith("echo ") for line in lines)  # nothing after quit


def test_own_totals_follow_partial_reversals_and_reversed_refunds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = f'pan = "{M0002[0]}"\npin = "{M0002[1]}"'
    scenario = tmp_path / "totals.toml"
    scenario.write_text(
        f"""
[[step]]
id = "a"
kind = "purchase"
{card}
amount = 1_000_000
expect = "00"

[[step]]
kind = "reversal"
of = "a"
actual_amount = 600_000
expect = "00"

[[step]]
id = "b"
kind = "purchase"
{card}
amount = 500_000
expect = "00"

[[step]]
id = "b-back"
kind = "refund"
of = "b"
amount = 200_000
expect = "00"

[[step]]
id = "c"
kind = "refund"
of = "b"
amount = 100_000
expect = "00"

[[step]]
kind = "advice"
of = "c"
expect = "00"

[[step]]
id = "eod"
kind = "reconcile"
expect = "00"
"""
    )
    with running_switch(make_config(tmp_path)) as switch:
        code = main(["pos", "run", str(scenario), "--port", str(switch.port), "--no-state"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "switch: debits 2 / 1,100,000, credits 1 / 200,000" in out
