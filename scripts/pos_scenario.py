"""POS simulator: scripted sessions (``honar pos run``) and a terminal for a person
(``honar pos interactive``).

A scenario file (TOML, described in docs/testers.md) is a list of steps for one terminal, run in
order over one TCP connection. Each step sends one message (or pauses), prints the exchange on
one line and checks the step's expectations; the run's exit code is 1 when any expectation was
not met. As a real terminal does, the simulator:

* sends a reversal advice (0420) for a financial request that got no answer within the
  response timeout, and counts that request as not done;
* keeps its own totals of the day from the answers it got (debits: approved purchases and
  completions less reversals; credits: approved refunds) and sends them in the end-of-day 0500.

Interactive mode reads commands (``purchase PAN PIN AMOUNT``, ``eod`` ... ``help``) from standard
input, one a line, so a test can drive it through a pipe.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from scripts.pos import (
    PosClient,
    PosTerminal,
    add_connection_arguments,
    card_expiry,
    load_state,
    render,
    save_state,
)
from switch.codec import CodecError, Message
from switch.codes import meaning
from switch.dialects import get_dialect
from switch.dialects.base import Framing
from switch.requests import parse_tlv

EXPECTATIONS = {"expect", "expect_discount", "expect_charged"}
CARD = {"pan", "pin", "amount", "expiry"}
# The keys each step kind takes (besides ``id`` and ``kind``).
STEP_KEYS: dict[str, set[str]] = {
    "signon": EXPECTATIONS,
    "signoff": EXPECTATIONS,
    "keyexchange": EXPECTATIONS,
    "echo": EXPECTATIONS,
    "purchase": CARD | EXPECTATIONS,
    "balance": (CARD - {"amount"}) | EXPECTATIONS,
    "preauth": CARD | EXPECTATIONS,
    "completion": {"of", "amount"} | EXPECTATIONS,
    "refund": {"of", "amount", "pan", "expiry"} | EXPECTATIONS,
    "reversal": {"of", "actual_amount"} | EXPECTATIONS,
    "advice": {"of", "actual_amount"} | EXPECTATIONS,
    "reconcile": {"credits_count", "debits_count", "credits_amount", "debits_amount"}
    | EXPECTATIONS,
    "pause": {"seconds"},
}
REQUIRED_KEYS: dict[str, set[str]] = {
    "purchase": {"pan", "amount"},
    "balance": {"pan"},
    "preauth": {"pan", "amount"},
    "completion": {"of", "amount"},
    "refund": {"of"},
    "reversal": {"of"},
    "advice": {"of"},
    "pause": {"seconds"},
}
# What ``of`` may name, by step kind.
REFERABLE: dict[str, set[str]] = {
    "completion": {"preauth"},
    "refund": {"purchase", "completion"},
    "reversal": {"purchase", "preauth", "completion", "refund"},
    "advice": {"purchase", "preauth", "completion", "refund"},
}
TOP_LEVEL_KEYS = {"name", "description", "terminal", "dialect", "step"}
NETWORK_CODES = {"signon": "001", "signoff": "002", "keyexchange": "101", "echo": "301"}
_STEP_HEADER = re.compile(r"^\s*\[\[\s*step\s*\]\]")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file, step and line."""


@dataclass(frozen=True)
class Step:
    """One step of a scenario, checked and with its defaults filled in."""

    number: int  # 1-based position in the file
    kind: str
    id: str
    line: int | None
    args: dict[str, Any]

    @property
    def label(self) -> str:
        """The step's id, or ``#N`` for an unnamed step."""
        return self.id or f"#{self.number}"

    def where(self, source: str) -> str:
        """``FILE: step N ('id'), line L`` for messages."""
        text = f"{source}: step {self.number}"
        if self.id:
            text += f" ({self.id!r})"
        if self.line is not None:
            text += f", line {self.line}"
        return text


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario file."""

    source: str
    steps: tuple[Step, ...]
    name: str = ""
    terminal: str | None = None
    dialect: str | None = None


# --- the file --------------------------------------------------------------------------------


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; ScenarioError (naming file, step and line) if it is bad.

    A name without a directory that is not a file is looked up among the scenarios shipped in
    ``scripts/scenarios`` (``day-at-the-hotel`` finds ``day-at-the-hotel.toml``)."""
    source = Path(path)
    if not source.exists():
        bundled = bundled_scenario(str(path))
        if bundled is None:
            raise ScenarioError(f"{path}: no such scenario file")
        source = bundled
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(f"{source}: cannot read: {error}") from None
    return parse_scenario(text, str(source))


def bundled_scenario(name: str) -> Path | None:
    """The path of a scenario shipped with the simulator (``scripts/scenarios/NAME.toml``)."""
    if "/" in name or "\\" in name:
        return None
    file_name = name if name.endswith(".toml") else f"{name}.toml"
    candidate = resources.files("scripts").joinpath("scenarios", file_name)
    if not candidate.is_file():
        return None
    return Path(str(candidate))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Check the text of a scenario file (see docs/testers.md) and return its steps."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{source}: not valid TOML: {error}") from None
    unknown = sorted(set(document) - TOP_LEVEL_KEYS)
    if unknown:
        raise ScenarioError(
            f"{source}: unknown top-level key {unknown[0]!r} "
            f"(allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        )
    for key in ("name", "description", "terminal", "dialect"):
        if key in document and not isinstance(document[key], str):
            raise ScenarioError(f"{source}: {key} must be a string")
    dialect = document.get("dialect")
    if dialect is not None and dialect not in ("shetab87", "shetab93"):
        raise ScenarioError(f"{source}: dialect must be shetab87 or shetab93, not {dialect!r}")
    raw_steps = document.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{source}: no steps: write each step as a [[step]] table")
    headers = [n for n, line in enumerate(text.splitlines(), 1) if _STEP_HEADER.match(line)]
    lines: list[int | None] = (
        list(headers) if len(headers) == len(raw_steps) else [None] * len(raw_steps)
    )
    steps: list[Step] = []
    by_id: dict[str, Step] = {}
    for number, (raw, line) in enumerate(zip(raw_steps, lines, strict=True), 1):
        step = _parse_step(raw, number, line, source, by_id)
        if step.id:
            by_id[step.id] = step
        steps.append(step)
    return Scenario(
        source=source,
        steps=tuple(steps),
        name=str(document.get("name", "")),
        terminal=document.get("terminal"),
        dialect=dialect,
    )


def _parse_step(
    raw: object, number: int, line: int | None, source: str, earlier: dict[str, Step]
) -> Step:
    where = Step(number, "", "", line, {}).where(source)
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a step must be a table")
    kind = raw.get("kind")
    step_id = raw.get("id", "")
    if not isinstance(step_id, str):
        raise ScenarioError(f"{where}: id must be a string")
    where = Step(number, "", step_id, line, {}).where(source)
    if not isinstance(kind, str):
        raise ScenarioError(f"{where}: kind is missing (one of: {', '.join(STEP_KEYS)})")
    if kind not in STEP_KEYS:
        raise ScenarioError(f"{where}: unknown step kind {kind!r} (one of: {', '.join(STEP_KEYS)})")
    if step_id in earlier:
        raise ScenarioError(f"{where}: id {step_id!r} is used by an earlier step too")
    args = {k: v for k, v in raw.items() if k not in ("id", "kind")}
    for key in args:
        if key not in STEP_KEYS[kind]:
            allowed = ", ".join(sorted(STEP_KEYS[kind])) or "none"
            raise ScenarioError(f"{where}: a {kind} step takes no {key!r} (it takes: {allowed})")
    for key in sorted(REQUIRED_KEYS.get(kind, set()) - set(args)):
        raise ScenarioError(f"{where}: a {kind} step needs {key!r}")
    try:
        _check_values(args)
    except ValueError as error:
        raise ScenarioError(f"{where}: {error}") from None
    if "of" in args:
        original = earlier.get(args["of"])
        if original is None:
            raise ScenarioError(
                f"{where}: 'of' names {args['of']!r}, which is not the id of an earlier step"
            )
        if original.kind not in REFERABLE[kind]:
            raise ScenarioError(
                f"{where}: a {kind} must be of a {' or '.join(sorted(REFERABLE[kind]))} step; "
                f"{args['of']!r} is a {original.kind}"
            )
        if kind == "refund":
            card = (
                original.args if original.kind == "purchase" else earlier[original.args["of"]].args
            )
            args.setdefault("pan", card["pan"])
            args.setdefault("expiry", card["expiry"])
    if "pan" in args:
        try:
            args["expiry"] = card_expiry(args["pan"], args.get("expiry"))
        except ValueError:
            raise ScenarioError(
                f'{where}: give expiry = "YYMM" ({args["pan"]} is not a demo card)'
            ) from None
    if "expect" in args:
        expect = args["expect"]
        args["expect"] = (expect,) if isinstance(expect, str) else tuple(expect)
    return Step(number, kind, step_id, line, args)


def _check_values(args: dict[str, Any]) -> None:
    for key, value in args.items():
        if key in ("pan", "pin", "expiry", "of", "expect_discount") and not isinstance(value, str):
            raise ValueError(f"{key} must be a string (in quotes)")
        if key == "pan" and not (value.isdigit() and 12 <= len(value) <= 19):
            raise ValueError(f"pan must be 12 to 19 digits, not {value!r}")
        if key == "pin" and not (value.isdigit() and 4 <= len(value) <= 12):
            raise ValueError(f"pin must be 4 to 12 digits, not {value!r}")
        if key == "expiry" and not (value.isdigit() and len(value) == 4):
            raise ValueError(f"expiry must be 4 digits YYMM, not {value!r}")
        if key in (
            "amount",
            "actual_amount",
            "expect_charged",
            "credits_count",
            "debits_count",
            "credits_amount",
            "debits_amount",
        ) and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{key} must be a whole number ≥ 0, not {value!r}")
        if key == "seconds" and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600
        ):
            raise ValueError(f"seconds must be a number from 0 to 3600, not {value!r}")
        if key == "expect":
            codes = [value] if isinstance(value, str) else value
            if (
                not isinstance(codes, list)
                or not codes
                or not all(isinstance(c, str) and len(c) == 2 for c in codes)
            ):
                raise ValueError(
                    f"expect must be a 2-character response code or a list of them, not {value!r}"
                )


# --- the terminal's side of a session --------------------------------------------------------


@dataclass
class _Entry:
    kind: str
    amount: int
    reversed: int = 0
    refunded: int = 0


@dataclass(frozen=True)
class Totals:
    """A terminal's figures for the end-of-day 0500."""

    credits_count: int = 0
    debits_count: int = 0
    credits_amount: int = 0
    debits_amount: int = 0


def _transaction_kind(message: Message) -> str:
    mti, code = message.mti, (message.get(3) or "")[:2]
    if mti == "0100":
        return "preauth"
    if mti == "0220":
        return "completion"
    if mti == "0200":
        return {"31": "balance", "20": "refund"}.get(code, "purchase")
    if mti in ("0400", "0420"):
        return "reversal" if mti == "0400" else "advice"
    if mti == "0500":
        return "reconciliation"
    if mti == "0800":
        names = {"001": "sign-on", "002": "sign-off", "101": "key exchange", "301": "echo"}
        return names.get(message.get(70) or "", "network")
    return mti


def _key(message: Message) -> tuple[str, str, str]:
    return (message.mti, message.get(11) or "", message.get(7) or "")


@dataclass
class Book:
    """The terminal's own record of the day, kept from the answers it got."""

    entries: dict[tuple[str, str, str], _Entry] = field(default_factory=dict)
    by_rrn: dict[str, _Entry] = field(default_factory=dict)

    def record(self, request: Message, response: Message) -> None:
        """Take an answered request into account (only approvals change anything)."""
        if response.get(39) != "00":
            return
        kind = _transaction_kind(request)
        amount = int(request.get(4) or "0")
        if kind in ("purchase", "completion", "refund", "preauth"):
            entry = _Entry(kind, amount)
            self.entries[_key(request)] = entry
            rrn = response.get(37)
            if rrn:
                self.by_rrn[rrn.strip()] = entry
            if kind == "refund":
                original = self.by_rrn.get(parse_tlv(request.get(48) or "").get("ORN", ""))
                if original is not None:
                    original.refunded += amount
        elif kind in ("reversal", "advice"):
            self._reverse(request)

    def _reverse(self, request: Message) -> None:
        data = request.get(90) or ""
        original = self.entries.get((data[:4], data[4:10], data[10:20]))
        if original is None:
            return
        remaining = original.amount - original.reversed - original.refunded
        if remaining <= 0:
            return
        replacement = request.get(95)
        if replacement is None:
            amount = remaining
        else:
            amount = max(0, original.amount - int(replacement[:12]) - original.reversed)
        original.reversed += min(amount, remaining)

    def totals(self) -> Totals:
        """Debits: approved purchases and completions less reversals; credits: approved refunds
        less reversals (each counted while something of it is left)."""
        debits = [e for e in self.entries.values() if e.kind in ("purchase", "completion")]
        credits = [e for e in self.entries.values() if e.kind == "refund"]
        debits = [e for e in debits if e.reversed < e.amount]
        credits = [e for e in credits if e.reversed < e.amount]
        return Totals(
            credits_count=len(credits),
            debits_count=len(debits),
            credits_amount=sum(e.amount - e.reversed for e in credits),
            debits_amount=sum(e.amount - e.reversed for e in debits),
        )


@dataclass
class Exchange:
    """One request and what came of it."""

    request: bytes
    sent: Message
    response: Message | None = None
    mac_ok: bool | None = None
    advice: Exchange | None = None  # the 0420 sent because no answer came in time

    @property
    def code(self) -> str | None:
        """The response code, or None without an answer."""
        return None if self.response is None else self.response.get(39)


class Session:
    """One terminal on one connection: sends requests, matches answers (MTI + 10, field 11,
    field 41), sends a 0420 advice when a financial request goes unanswered, keeps the book."""

    def __init__(
        self,
        terminal: PosTerminal,
        host: str,
        port: int,
        *,
        framing: Framing = Framing.ASCII4,
        timeout_s: float = 10.0,
        out: TextIO | None = None,
    ) -> None:
        self.terminal = terminal
        self.host = host
        self.port = port
        self.framing = framing
        self.timeout_s = timeout_s
        self.out = out if out is not None else sys.stdout
        self.book = Book()
        self.client: PosClient | None = None

    async def connect(self) -> None:
        """Open the connection (if it is not open)."""
        if self.client is None:
            self.client = await PosClient.connect(self.host, self.port, self.framing)

    async def close(self) -> None:
        """Close the connection."""
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    async def exchange(
        self, payload: bytes, *, on_timeout: Callable[[], bytes] | None = None
    ) -> Exchange:
        """Send ``payload`` and wait for its answer. Without one in time, send the request
        ``on_timeout`` builds (a 0420 advice), if given, and record it in the exchange.
        ConnectionError when the switch closes the connection."""
        await self.connect()
        assert self.client is not None
        sent = self.terminal.read(payload)
        exchange = Exchange(payload, sent)
        await self.client.send(payload)
        try:
            raw = await self._answer_to(sent)
        except TimeoutError:
            if on_timeout is not None:
                exchange.advice = await self.exchange(on_timeout())
            return exchange
        exchange.response, exchange.mac_ok = self.terminal.check_response(raw, payload)
        self.book.record(sent, exchange.response)
        return exchange

    async def _answer_to(self, sent: Message) -> bytes:
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        wanted = (f"{sent.mti[:2]}{int(sent.mti[2]) + 1}{sent.mti[3]}", sent.get(11))
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            raw = await self.client.receive(left)
            try:
                message = self.terminal.read(raw)
            except CodecError as error:
                print(f"  (an answer that does not decode was ignored: {error})", file=self.out)
                continue
            tid = (message.get(41) or "").strip()
            if (message.mti, message.get(11)) == wanted and tid == self.terminal.profile.tid:
                return raw
            print(
                f"  (late or unexpected answer ignored: {message.mti} stan {message.get(11)} "
                f"code {message.get(39)})",
                file=self.out,
            )

    def financial(self, payload: bytes, original: bytes | None = None) -> Callable[[], bytes]:
        """The reversal advice to send when ``payload`` goes unanswered: of ``payload`` itself,
        or for an unanswered reversal, of the ``original`` it reversed (with its field 95)."""

        def advice() -> bytes:
            if original is None:
                return self.terminal.reversal(payload, advice=True)
            replacement = self.terminal.read(payload).get(95)
            actual = None if replacement is None else int(replacement[:12])
            return self.terminal.reversal(original, advice=True, actual_amount=actual)

        return advice


# --- printing --------------------------------------------------------------------------------


def _amounts(message: Message) -> dict[tuple[str, str], int]:
    value = message.get(54) or ""
    out: dict[tuple[str, str], int] = {}
    for i in range(0, len(value) - 19, 20):
        block = value[i : i + 20]
        out[(block[:2], block[2:4])] = (-1 if block[7] == "D" else 1) * int(block[8:20])
    return out


def _discount_code(message: Message) -> str:
    try:
        return parse_tlv(message.get(48) or "").get("DSC", "")
    except ValueError:
        return ""


def describe(
    label: str, exchange: Exchange, timeout_s: float, indent: str = "", width: int = 12
) -> str:
    """One exchange on one line (and its advice on the next, when one was sent)."""
    sent = exchange.sent
    kind = _transaction_kind(sent)
    text = f"{indent}{label:<{width}} {sent.mti} {kind:<14}"
    text += f" {int(sent.fields[4]):>13,}" if sent.has(4) else " " * 14
    text += f"  stan {sent.get(11)} -> "
    response = exchange.response
    if response is None:
        text += f"no answer within {timeout_s:g} s"
        if exchange.advice is not None:
            advice = describe("", exchange.advice, timeout_s, "  ", width)
            text += "; reversal advice sent:\n" + advice
        return text
    code = response.get(39) or "--"
    text += f"{response.mti} {code} {meaning(code)}"
    details = []
    if response.get(37):
        details.append(f"rrn {response.fields[37]}")
    if response.get(38):
        details.append(f"auth {response.fields[38]}")
    amounts = _amounts(response)
    if ("00", "92") in amounts:
        verb = "back to card" if kind == "refund" else "charged"
        details.append(f"{verb} {abs(amounts['00', '92']):,}")
    if amounts.get(("00", "91")):
        details.append(f"discount {abs(amounts['00', '91']):,} {_discount_code(response)}".rstrip())
    if kind == "balance" and ("00", "02") in amounts:
        details.append(f"available {amounts['00', '02']:,}")
    if response.mti == "0510":
        figures = [int(response.get(n) or "0") for n in (76, 88, 74, 86)]
        details.append(
            f"switch: debits {figures[0]} / {figures[1]:,}, credits {figures[2]} / {figures[3]:,}"
        )
    if exchange.mac_ok is False:
        details.append("MAC WRONG")
    if details:
        text += "  " + "  ".join(details)
    return text


# --- running a scenario ----------------------------------------------------------------------


@dataclass
class RunResult:
    """What a scenario run came to."""

    unmet: list[str] = field(default_factory=list)
    exchanges: dict[str, Exchange] = field(default_factory=dict)
    steps_run: int = 0


def _check(step: Step, exchange: Exchange, timeout_s: float) -> list[str]:
    args = step.args
    problems: list[str] = []
    response = exchange.response
    wants_answer = any(k in args for k in EXPECTATIONS)
    if response is None:
        if wants_answer:
            problem = f"no answer within {timeout_s:g} s"
            if exchange.advice is not None:
                problem += f" (reversal advice sent, answered {exchange.advice.code or 'not'})"
            problems.append(problem)
        return problems
    code = response.get(39) or ""
    if "expect" in args and code not in args["expect"]:
        problems.append(
            f"expected code {' or '.join(args['expect'])}, got {code} ({meaning(code)})"
        )
    if "expect_discount" in args:
        got = _discount_code(response)
        if got != args["expect_discount"]:
            problems.append(
                f"expected discount rule {args['expect_discount'] or '(none)'}, "
                f"got {got or '(none)'}"
            )
    if "expect_charged" in args:
        charged = _amounts(response).get(("00", "92"))
        if charged is None or abs(charged) != args["expect_charged"]:
            shown = "nothing" if charged is None else f"{abs(charged):,}"
            problems.append(f"expected {args['expect_charged']:,} charged to the card, got {shown}")
    if exchange.mac_ok is False:
        problems.append("the response MAC does not verify")
    return problems


async def run_scenario(
    scenario: Scenario,
    session: Session,
    *,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> RunResult:
    """Run every step of ``scenario`` over ``session``; print each exchange; return the unmet
    expectations (``step ...: what``)."""
    result = RunResult()
    terminal = session.terminal
    out = session.out
    sent: dict[str, Exchange] = {}
    width = max(12, *(len(step.label) for step in scenario.steps))
    for step in scenario.steps:
        args = step.args
        name = f"step {step.number} {step.label!r}" + (f" (line {step.line})" if step.line else "")
        if step.kind == "pause":
            print(f"{step.label:<{width}} pause {args['seconds']:g} s", file=out)
            await sleep(float(args["seconds"]))
            result.steps_run += 1
            continue
        try:
            payload, on_timeout = _build(step, terminal, session, sent)
        except LookupError as error:
            print(f"{step.label:<{width}} not sent: {error}", file=out)
            result.unmet.append(f"{name}: not sent: {error}")
            continue
        try:
            exchange = await session.exchange(payload, on_timeout=on_timeout)
        except (ConnectionError, OSError) as error:
            print(f"{step.label:<{width}} connection lost: {error}", file=out)
            result.unmet.append(f"{name}: connection lost ({error}); later steps not run")
            break
        result.steps_run += 1
        if step.id:
            sent[step.id] = exchange
            result.exchanges[step.id] = exchange
        result.exchanges.setdefault(f"#{step.number}", exchange)
        print(describe(step.label, exchange, session.timeout_s, width=width), file=out)
        if step.kind == "keyexchange" and exchange.code == "00" and exchange.response:
            tkc, akc = terminal.accept_new_keys(exchange.response)
            print(
                f"{'':<{width}} new working keys in force (TPK KCV {tkc}, TAK KCV {akc})", file=out
            )
        for problem in _check(step, exchange, session.timeout_s):
            print(f"{'':<{width}} UNMET: {problem}", file=out)
            result.unmet.append(f"{name}: {problem}")
    return result


def _build(
    step: Step, terminal: PosTerminal, session: Session, sent: dict[str, Exchange]
) -> tuple[bytes, Callable[[], bytes] | None]:
    args = step.args
    kind = step.kind
    if kind in NETWORK_CODES:
        return terminal.network(NETWORK_CODES[kind]), None
    if kind in ("purchase", "preauth"):
        build = terminal.purchase if kind == "purchase" else terminal.preauth
        payload = build(
            pan=args["pan"], pin=args.get("pin"), amount=args["amount"], expiry=args["expiry"]
        )
        return payload, session.financial(payload)
    if kind == "balance":
        return terminal.balance(pan=args["pan"], pin=args.get("pin"), expiry=args["expiry"]), None
    if kind == "reconcile":
        totals = session.book.totals()
        payload = terminal.reconciliation(
            credits_count=args.get("credits_count", totals.credits_count),
            debits_count=args.get("debits_count", totals.debits_count),
            credits_amount=args.get("credits_amount", totals.credits_amount),
            debits_amount=args.get("debits_amount", totals.debits_amount),
        )
        return payload, None
    original = sent.get(args["of"])
    if original is None:
        raise LookupError(f"its original {args['of']!r} was not sent")
    if kind == "completion":
        payload = terminal.completion(original.request, amount=args["amount"])
        return payload, session.financial(payload)
    if kind == "refund":
        rrn = (original.response.get(37) if original.response else None) or ""
        if not rrn.strip():
            raise LookupError(f"its original {args['of']!r} got no RRN in an answer")
        amount = args.get("amount", int(original.sent.get(4) or "0"))
        payload = terminal.refund(
            pan=args["pan"], amount=amount, original_rrn=rrn, expiry=args["expiry"]
        )
        return payload, session.financial(payload)
    advice = kind == "advice"
    payload = terminal.reversal(
        original.request, advice=advice, actual_amount=args.get("actual_amount")
    )
    return payload, None if advice else session.financial(payload, original.request)


# --- interactive -----------------------------------------------------------------------------

HELP = """commands (amounts in IRR; PIN '-' for none):
  purchase PAN PIN AMOUNT        0200 purchase
  balance PAN PIN                0200 balance inquiry
  preauth PAN PIN AMOUNT         0100 pre-authorization (hold)
  complete RRN|last AMOUNT       0220 completion of a pre-authorization
  refund RRN PAN AMOUNT          0200 refund of the purchase with that RRN
  reverse last|RRN [ACTUAL]      0400 reversal (partial with ACTUAL)
  advice last|RRN [ACTUAL]       0420 reversal advice
  echo | signon | signoff | keyexchange
  eod                            end-of-day 0500 with this session's totals
  totals                         this session's totals
  help                           this text
  quit                           leave (also end of input)"""


class Interactive:
    """A person at a terminal: one command a line, answers printed decoded."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.by_rrn: dict[str, Exchange] = {}
        self.last: Exchange | None = None  # the last financial request sent
        self.last_preauth: Exchange | None = None

    async def run(self, lines: TextIO) -> int:
        """Read commands from ``lines`` until ``quit`` or the end; return the exit code."""
        out = self.session.out
        tid = self.session.terminal.profile.tid
        print(
            f"terminal {tid} at {self.session.host}:{self.session.port}; 'help' lists commands",
            file=out,
        )
        while True:
            if lines.isatty():
                print(f"{tid}> ", end="", file=out, flush=True)
            line = await asyncio.to_thread(lines.readline)
            if not line:
                return 0
            words = shlex.split(line, comments=True) if line.strip() else []
            if not words:
                continue
            if words[0] in ("quit", "exit"):
                return 0
            try:
                await self.command(words)
            except (ValueError, LookupError) as error:
                print(f"error: {error}", file=out)
            except (ConnectionError, OSError) as error:
                print(f"connection lost ({error}); reconnecting on the next command", file=out)
                self.session.client = None
            out.flush()

    async def command(self, words: list[str]) -> None:
        """Carry out one command line (split into words)."""
        session, terminal, out = self.session, self.session.terminal, self.session.out
        verb, rest = words[0], words[1:]
        on_timeout: Callable[[], bytes] | None = None
        if verb == "help":
            print(HELP, file=out)
            return
        if verb == "totals":
            t = session.book.totals()
            print(
                f"debits {t.debits_count} / {t.debits_amount:,}, "
                f"credits {t.credits_count} / {t.credits_amount:,}",
                file=out,
            )
            return
        if verb in NETWORK_CODES:
            _arity(verb, rest, 0)
            payload = terminal.network(NETWORK_CODES[verb])
        elif verb in ("purchase", "preauth"):
            _arity(verb, rest, 3)
            pan, pin, amount = rest[0], _pin(rest[1]), _amount(rest[2])
            build = terminal.purchase if verb == "purchase" else terminal.preauth
            payload = build(pan=pan, pin=pin, amount=amount, expiry=_expiry(pan))
            on_timeout = session.financial(payload)
        elif verb == "balance":
            _arity(verb, rest, 2)
            pan = rest[0]
            payload = terminal.balance(pan=pan, pin=_pin(rest[1]), expiry=_expiry(pan))
        elif verb == "complete":
            _arity(verb, rest, 2)
            original = self.last_preauth if rest[0] == "last" else self._by_rrn(rest[0])
            if original is None:
                raise LookupError("no pre-authorization in this session yet")
            payload = terminal.completion(original.request, amount=_amount(rest[1]))
            on_timeout = session.financial(payload)
        elif verb == "refund":
            _arity(verb, rest, 3)
            pan = rest[1]
            payload = terminal.refund(
                pan=pan,
                amount=_amount(rest[2]),
                original_rrn=rest[0],
                expiry=_expiry(pan),
            )
            on_timeout = session.financial(payload)
        elif verb in ("reverse", "advice"):
            if len(rest) not in (1, 2):
                raise ValueError(f"usage: {verb} last|RRN [ACTUAL]")
            original = self.last if rest[0] == "last" else self._by_rrn(rest[0])
            if original is None:
                raise LookupError("nothing to reverse in this session yet")
            actual = _amount(rest[1]) if len(rest) == 2 else None
            payload = terminal.reversal(
                original.request, advice=verb == "advice", actual_amount=actual
            )
            if verb == "reverse":
                on_timeout = session.financial(payload, original.request)
        elif verb == "eod":
            _arity(verb, rest, 0)
            totals = session.book.totals()
            payload = terminal.reconciliation(
                credits_count=totals.credits_count,
                debits_count=totals.debits_count,
                credits_amount=totals.credits_amount,
                debits_amount=totals.debits_amount,
            )
        else:
            raise ValueError(f"unknown command {verb!r}; 'help' lists them")
        exchange = await session.exchange(payload, on_timeout=on_timeout)
        print(describe(verb, exchange, session.timeout_s), file=out)
        canonical = get_dialect("shetab87")
        if exchange.response is not None:
            print(render(exchange.response, exchange.mac_ok, canonical), file=out)
        kind = _transaction_kind(exchange.sent)
        if kind in ("purchase", "preauth", "completion", "refund"):
            self.last = exchange
            if kind == "preauth":
                self.last_preauth = exchange
        rrn = exchange.response.get(37) if exchange.response else None
        if rrn:
            self.by_rrn[rrn.strip()] = exchange
        if verb == "keyexchange" and exchange.code == "00" and exchange.response is not None:
            tkc, akc = terminal.accept_new_keys(exchange.response)
            print(f"new working keys in force (TPK KCV {tkc}, TAK KCV {akc})", file=out)

    def _by_rrn(self, rrn: str) -> Exchange:
        exchange = self.by_rrn.get(rrn)
        if exchange is None:
            raise LookupError(f"no answer with RRN {rrn} in this session")
        return exchange


def _arity(verb: str, rest: list[str], count: int) -> None:
    if len(rest) != count:
        usage = next(
            (line.strip() for line in HELP.splitlines() if line.strip().startswith(verb)), verb
        )
        raise ValueError(f"usage: {usage}")


def _expiry(pan: str) -> str:
    try:
        return card_expiry(pan, None)
    except ValueError:
        raise ValueError(f"{pan} is not a demo card (its expiry date is not known)") from None


def _pin(text: str) -> str | None:
    if text == "-":
        return None
    if not (text.isdigit() and 4 <= len(text) <= 12):
        raise ValueError(f"a PIN is 4 to 12 digits (or '-'), not {text!r}")
    return text


def _amount(text: str) -> int:
    cleaned = text.replace(",", "").replace("_", "")
    if not cleaned.isdigit():
        raise ValueError(f"an amount is a whole number of rials, not {text!r}")
    return int(cleaned)


# --- command line ----------------------------------------------------------------------------


def add_pos_commands(pos_commands: Any) -> None:
    """Add ``honar pos run`` and ``honar pos interactive`` (called by ``scripts.pos.register``)."""
    run = pos_commands.add_parser(
        "run", help="run a scripted scenario (TOML) and check its expectations"
    )
    run.add_argument("scenario", help="scenario file, or the name of a bundled one")
    add_connection_arguments(run, terminal=None, dialect=None)
    run.add_argument(
        "--no-state",
        action="store_true",
        help="start from the demo keys and STAN 0, and save nothing",
    )
    run.set_defaults(func=run_command)
    interactive = pos_commands.add_parser(
        "interactive", help="a terminal for a person: commands on standard input"
    )
    add_connection_arguments(interactive)
    interactive.add_argument("--no-state", action="store_true", help="as for run")
    interactive.set_defaults(func=interactive_command)


def _terminal(args: Any, tid: str, dialect: str) -> tuple[PosTerminal, dict[str, Any] | None]:
    state = None if args.no_state else load_state(Path(args.state))
    terminal = PosTerminal.demo(tid, state)
    terminal.dialect = get_dialect(dialect)
    return terminal, state


def _save(args: Any, terminal: PosTerminal, state: dict[str, Any] | None) -> None:
    if state is not None:
        save_state(Path(args.state), terminal, state)


async def run_command(args: Any) -> int:
    """``honar pos run``: run the scenario; 0 when every expectation was met, else 1."""
    scenario = load_scenario(args.scenario)
    tid = args.terminal or scenario.terminal or "HNR00004"
    dialect = args.dialect or scenario.dialect or "shetab87"
    terminal, state = _terminal(args, tid, dialect)
    session = Session(
        terminal, args.host, args.port, framing=Framing(args.framing), timeout_s=args.timeout
    )
    title = f" ({scenario.name})" if scenario.name else ""
    print(f"scenario {scenario.source}{title}: terminal {tid}, {args.host}:{args.port}, {dialect}")
    try:
        result = await run_scenario(scenario, session)
    finally:
        await session.close()
        _save(args, terminal, state)
    total = len(scenario.steps)
    if result.unmet:
        print(f"\n{len(result.unmet)} unmet expectation(s) in {total} steps:")
        for problem in result.unmet:
            print(f"  {problem}")
        return 1
    print(f"\nall expectations met ({total} steps)")
    return 0


async def interactive_command(args: Any) -> int:
    """``honar pos interactive``: a terminal driven by commands on standard input."""
    terminal, state = _terminal(args, args.terminal, args.dialect)
    session = Session(
        terminal, args.host, args.port, framing=Framing(args.framing), timeout_s=args.timeout
    )
    try:
        await session.connect()
        return await Interactive(session).run(sys.stdin)
    finally:
        await session.close()
        _save(args, terminal, state)
