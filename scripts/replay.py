"""``honar replay TRACE --to HOST:PORT``: send a trace's requests again and compare the answers.

The ``in`` frames of a trace (spec/trace-format.md) are sent to a switch, either as recorded or
re-stamped (``--restamp``: fresh field 7 and 11, field 90 pointed at the re-stamped original, PIN
block carried over to the working key now in force, MAC made again with the demo terminal's keys,
see :class:`Restamper`). Each answer is matched to the recorded ``out`` frame by MTI, field 11
(mapped back to the recorded STAN when re-stamped) and field 41, and compared field by field,
ignoring the fields that legitimately differ between runs (:data:`IGNORED_DEFAULT`).

Connections: by default one connection, one request at a time, in trace order. With
``--connections N`` the trace's connections are spread over N client connections (a recorded
connection always goes to the same one, in its order); order across connections is not kept.
Pacing: the recorded gaps between requests are kept unless ``--fast``.

Outcome per request: *matched* (every compared field equal), *differing*, *missing* (a recorded
answer but none now); answers nobody is waiting for are *unexpected*. The exit code is 1 when
anything differs, is missing or unexpected, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from hsm_sim.des import decrypt_tdes_ecb, encrypt_tdes_ecb
from scripts.pos import PosClient, PosTerminal
from scripts.trace import display_value
from switch.codec import CodecError, Message, decode, encode
from switch.dialects import Dialect, get_dialect
from switch.dialects.base import Framing
from switch.requests import parse_tlv
from switch.trace import TraceRecord, read_trace

IGNORED_DEFAULT = (7, 12, 13, 15, 37, 38, 64, 128)
TIMEOUT_S_DEFAULT = 5.0
NO_ANSWER_WAIT_S_DEFAULT = 0.3
CONNECTIONS_MAX = 256

Key = tuple[str, str, str]  # (response MTI, STAN, terminal id)


def response_mti_of(mti: str, dialect: Dialect) -> str:
    """The MTI an answer to ``mti`` carries (request class + 10, repeats answered as originals)."""
    known = dialect.response_mti.get(mti)
    if known is not None:
        return known
    if len(mti) == 4 and mti.isdigit():
        return mti[:2] + str(int(mti[2]) + 1) + "0"
    return mti


@dataclass
class Exchange:
    """One recorded request, what was recorded in answer, and what happened on replay."""

    record: TraceRecord
    message: Message | None  # None: the request itself is undecodable
    key: Key | None  # how its answer is recognised (as recorded)
    expected: TraceRecord | None = None
    expected_message: Message | None = None
    recorded_tpk: str | None = None  # clear TPK in force when it was recorded (re-stamping)
    offset_s: float = 0.0  # seconds after the trace's first request


@dataclass(frozen=True)
class Difference:
    """One field that differs between the recorded and the new answer."""

    frame: int  # line of the request in the trace
    conn: str
    mti: str
    stan: str
    tid: str
    field: str
    expected: str | None
    got: str | None


@dataclass
class ReplayReport:
    """Everything a replay found."""

    sent: int = 0
    matched: int = 0
    differing: int = 0
    missing: int = 0
    unexpected: int = 0
    no_answer_as_recorded: int = 0
    recorded_answers_without_request: int = 0
    differences: list[Difference] = field(default_factory=list)
    missing_frames: list[dict[str, Any]] = field(default_factory=list)
    unexpected_frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing differs, is missing or is unexpected."""
        return not (self.differing or self.missing or self.unexpected)

    def summary(self) -> dict[str, int]:
        """The counts."""
        return {
            "sent": self.sent,
            "matched": self.matched,
            "differing": self.differing,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "no_answer_as_recorded": self.no_answer_as_recorded,
            "recorded_answers_without_request": self.recorded_answers_without_request,
        }

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (values shown as on screen: PANs masked)."""
        return {
            "summary": self.summary(),
            "differences": [asdict(d) for d in self.differences],
            "missing": self.missing_frames,
            "unexpected": self.unexpected_frames,
        }


def _identify(payload: bytes, dialect: Dialect) -> tuple[Message | None, dict[str, str]]:
    """The decoded message (or None) and its MTI/11/41 as text, from a partial decode if need be."""
    try:
        message = decode(payload, dialect)
    except CodecError as error:
        return None, {k: error.partial.get(k, "") for k in ("t", "11", "41")}
    ids = {"t": message.mti, "11": message.get(11) or "", "41": message.get(41) or ""}
    return message, ids


def plan(records: Sequence[TraceRecord], dialect: Dialect) -> tuple[list[Exchange], int]:
    """Pair each ``in`` frame with its recorded answer; return the exchanges, in trace order,
    and how many ``out`` frames answered no recorded request.

    Pairing follows the terminal's rule (MTI + 10, field 11, field 41) on the same connection,
    first come first served when a key repeats.
    """
    exchanges: list[Exchange] = []
    waiting: dict[tuple[str, Key], list[Exchange]] = {}
    orphans = 0
    recorded_tpk: dict[str, str] = {}
    first_in: datetime | None = None
    for record in records:
        message, ids = _identify(record.payload, dialect)
        conn = record.conn or ""
        if record.direction == "in":
            key: Key | None = None
            if ids["t"] and ids["11"] and ids["41"]:
                key = (response_mti_of(ids["t"], dialect), ids["11"], ids["41"])
            moment = record.timestamp()
            if moment is not None and first_in is None:
                first_in = moment
            offset = (moment - first_in).total_seconds() if moment and first_in else 0.0
            exchange = Exchange(record, message, key, offset_s=max(offset, 0.0))
            tid = ids["41"]
            exchange.recorded_tpk = recorded_tpk.get(tid) or _demo_tpk(tid)
            exchanges.append(exchange)
            if key is not None:
                waiting.setdefault((conn, key), []).append(exchange)
            continue
        out_key = (ids["t"], ids["11"], ids["41"])
        pending = waiting.get((conn, out_key))
        if not pending:
            orphans += 1
            continue
        answered = pending.pop(0)
        answered.expected, answered.expected_message = record, message
        if message is not None:
            new_tpk = _recorded_new_tpk(message)
            if new_tpk is not None:
                recorded_tpk[ids["41"]] = new_tpk
    return exchanges, orphans


def _demo_terminal(tid: str) -> PosTerminal | None:
    try:
        return PosTerminal.demo(tid)
    except ValueError:
        return None


def _demo_tpk(tid: str) -> str | None:
    terminal = _demo_terminal(tid) if tid else None
    return terminal.profile.tpk or None if terminal else None


def _recorded_new_tpk(response: Message) -> str | None:
    """The clear TPK a recorded key-exchange 0810 handed a demo terminal, if it is one."""
    if response.mti != "0810" or response.get(39) != "00" or response.get(70) != "101":
        return None
    terminal = _demo_terminal(response.get(41) or "")
    if terminal is None or not terminal.profile.tmk:
        return None
    try:
        tags = parse_tlv(response.get(48) or "")
        tmk = bytes.fromhex(terminal.profile.tmk)
        return decrypt_tdes_ecb(tmk, bytes.fromhex(tags["TPK"])).hex().upper()
    except (KeyError, ValueError):
        return None


class Restamper:
    """Re-stamps requests as a demo terminal would send them now.

    Field 7 becomes the current time, field 11 the terminal's next STAN (starting from a
    clock-derived number so that repeated replays do not collide), field 90 is pointed at the
    re-stamped original when the original was replayed, a PIN block recorded under a TPK that
    is no longer in force is re-encrypted under the current one (both are known: the recorded
    key exchange answers carry them under the demo TMK), and the MAC is made again.
    """

    def __init__(self, dialect: Dialect, clock: Callable[[], datetime] | None = None) -> None:
        self.dialect = dialect
        self.clock = clock or (lambda: datetime.now(UTC))
        self.terminals: dict[str, PosTerminal] = {}
        self._stamps: dict[tuple[str, str, str], tuple[str, str]] = {}

    def terminal(self, tid: str) -> PosTerminal:
        """The demo terminal ``tid`` (ValueError when it is not one)."""
        terminal = self.terminals.get(tid)
        if terminal is None:
            terminal = PosTerminal.demo(tid)
            terminal.profile.stan = int(time.time()) % 900_000
            self.terminals[tid] = terminal
        return terminal

    def restamp(self, exchange: Exchange) -> tuple[bytes, Message]:
        """The re-stamped payload and message of a decodable request."""
        message = exchange.message
        assert message is not None
        tid = message.get(41) or ""
        terminal = self.terminal(tid)
        fields = dict(message.fields)
        now = self.clock()
        new_stamp = (terminal.next_stan(), now.strftime("%m%d%H%M%S"))
        old_stamp = (fields.get(11, ""), fields.get(7, ""))
        fields[11] = new_stamp[0]
        if 7 in fields:
            fields[7] = new_stamp[1]
        self._stamps[(tid, *old_stamp)] = new_stamp
        original = fields.get(90)
        if original is not None and len(original) == 42:
            mapped = self._stamps.get((tid, original[4:10], original[10:20]))
            if mapped is not None:
                fields[90] = original[:4] + mapped[0] + mapped[1] + original[20:]
        pin_block = fields.get(52)
        tpk = terminal.profile.tpk
        if pin_block and tpk and exchange.recorded_tpk and exchange.recorded_tpk != tpk:
            clear = decrypt_tdes_ecb(bytes.fromhex(exchange.recorded_tpk), bytes.fromhex(pin_block))
            fields[52] = encrypt_tdes_ecb(bytes.fromhex(tpk), clear).hex().upper()
        had_mac = 64 in fields or 128 in fields
        unsigned = Message(message.mti, {k: v for k, v in fields.items() if k not in (64, 128)})
        if had_mac:
            return terminal.sign(unsigned), Message(message.mti, fields)
        return encode(unsigned, self.dialect), unsigned

    def after_answer(self, response: Message) -> None:
        """Take new working keys from an approved key exchange, as the terminal would."""
        if response.mti == "0810" and response.get(39) == "00" and response.get(70) == "101":
            tid = response.get(41) or ""
            if tid in self.terminals:
                with contextlib.suppress(KeyError, ValueError):
                    self.terminals[tid].accept_new_keys(response)


RESTAMPED_FIELDS = (7, 11, 90)


def compare(
    exchange: Exchange, got: Message, ignored: frozenset[int], *, sent: Message | None = None
) -> list[Difference]:
    """Field-by-field differences between the recorded answer and ``got``.

    ``sent`` is the re-stamped request, when it was: an echoed field 7, 11 or 90 that carries the
    re-stamped value is compared as if it carried the recorded one.
    """
    expected = exchange.expected_message
    assert expected is not None
    request = exchange.message
    ids = (
        request.mti if request else "",
        request.get(11) or "" if request else "",
        request.get(41) or "" if request else "",
    )

    def difference(name: str, want: str | None, have: str | None, number: int = 0) -> Difference:
        return Difference(
            frame=exchange.record.line,
            conn=exchange.record.conn or "",
            mti=ids[0],
            stan=ids[1],
            tid=ids[2],
            field=name,
            expected=None if want is None else display_value(number, want),
            got=None if have is None else display_value(number, have),
        )

    found = []
    if got.mti != expected.mti:
        found.append(difference("MTI", expected.mti, got.mti))
    have = dict(got.fields)
    if request is not None and sent is not None:
        for number in RESTAMPED_FIELDS:
            if number in have and have[number] == sent.get(number) and request.has(number):
                have[number] = request.fields[number]
    for number in sorted(set(expected.fields) | set(have)):
        if number in ignored:
            continue
        want, value = expected.fields.get(number), have.get(number)
        if want != value:
            found.append(difference(str(number), want, value, number))
    return found


class _Connection:
    """One client connection: sends requests, routes answers to whoever waits for them."""

    def __init__(self, client: PosClient, dialect: Dialect, report: ReplayReport) -> None:
        self.client = client
        self.dialect = dialect
        self.report = report
        self.waiting: dict[Key, list[asyncio.Future[tuple[bytes, Message | None]]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                payload = await self.client.receive(timeout_s=3600)
            except (ConnectionError, TimeoutError, OSError):
                return
            message, ids = _identify(payload, self.dialect)
            key = (ids["t"], ids["11"], ids["41"])
            futures = self.waiting.get(key)
            if futures:
                future = futures.pop(0)
                if not future.done():
                    future.set_result((payload, message))
                continue
            self.report.unexpected += 1
            self.report.unexpected_frames.append(
                {"mti": ids["t"], "stan": ids["11"], "tid": ids["41"], "hex_bytes": len(payload)}
            )

    def expect(self, key: Key) -> asyncio.Future[tuple[bytes, Message | None]]:
        future: asyncio.Future[tuple[bytes, Message | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiting.setdefault(key, []).append(future)
        return future

    def forget(self, key: Key, future: asyncio.Future[tuple[bytes, Message | None]]) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.get(key, []).remove(future)

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.client.close()


@dataclass
class ReplayOptions:
    """How to replay."""

    host: str
    port: int
    framing: Framing = Framing.ASCII4
    restamp: bool = False
    connections: int = 1
    fast: bool = False
    ignored: frozenset[int] = frozenset(IGNORED_DEFAULT)
    timeout_s: float = TIMEOUT_S_DEFAULT
    no_answer_wait_s: float = NO_ANSWER_WAIT_S_DEFAULT


class Progress:
    """A plain-text progress bar on a stream (redrawn in place on a terminal)."""

    def __init__(self, total: int, stream: TextIO | None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.done = 0
        self._last_tenth = -1
        self._tty = bool(stream is not None and stream.isatty())

    def step(self, report: ReplayReport) -> None:
        """One more request finished."""
        self.done += 1
        if self.stream is None:
            return
        tenth = self.done * 10 // self.total
        if not self._tty and tenth == self._last_tenth and self.done != self.total:
            return
        self._last_tenth = tenth
        filled = self.done * self.width // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        text = (
            f"[{bar}] {self.done}/{self.total} sent, {report.differing} differing, "
            f"{report.missing} missing"
        )
        if self._tty:
            end = "\n" if self.done == self.total else ""
            print(f"\r{text}", end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)


async def replay(
    records: Sequence[TraceRecord],
    options: ReplayOptions,
    *,
    dialect: Dialect | None = None,
    progress: TextIO | None = None,
    on_difference: Callable[[Difference], None] | None = None,
) -> ReplayReport:
    """Replay ``records`` against ``options.host:port``; return what was found."""
    dialect = dialect or get_dialect("shetab87")
    exchanges, orphans = plan(records, dialect)
    report = ReplayReport(recorded_answers_without_request=orphans)
    restamper = Restamper(dialect) if options.restamp else None
    if restamper is not None:
        for exchange in exchanges:
            if exchange.message is not None:
                restamper.terminal(exchange.message.get(41) or "")  # unknown terminal: say so now
    count = max(1, min(options.connections, CONNECTIONS_MAX))
    lanes: list[list[Exchange]] = [[] for _ in range(count)]
    lane_of: dict[str, int] = {}
    for exchange in exchanges:
        conn = exchange.record.conn or ""
        lane = lane_of.setdefault(conn, len(lane_of) % count)
        lanes[lane].append(exchange)
    bar = Progress(len(exchanges), progress)
    started = time.monotonic()

    async def open_connection() -> _Connection:
        client = await PosClient.connect(options.host, options.port, options.framing)
        return _Connection(client, dialect, report)

    async def run_lane(lane: list[Exchange]) -> None:
        if not lane:
            return
        connection = await open_connection()
        try:
            for exchange in lane:
                if not options.fast:
                    delay = started + exchange.offset_s - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                connection = await _one(connection, exchange)
                bar.step(report)
            await asyncio.sleep(options.no_answer_wait_s)  # let stray answers arrive
        finally:
            await connection.close()

    async def _one(connection: _Connection, exchange: Exchange) -> _Connection:
        payload, key = exchange.record.payload, exchange.key
        sent: Message | None = None
        if restamper is not None and exchange.message is not None and key is not None:
            payload, sent = restamper.restamp(exchange)
            key = (key[0], sent.get(11) or "", key[2])
        future = connection.expect(key) if key is not None else None
        try:
            await connection.client.send(payload)
        except (ConnectionError, OSError):
            await connection.close()
            connection = await open_connection()
            if key is not None:
                future = connection.expect(key)
            await connection.client.send(payload)
        report.sent += 1
        wait_s = options.timeout_s if exchange.expected is not None else options.no_answer_wait_s
        answer: tuple[bytes, Message | None] | None = None
        if future is not None:
            try:
                answer = await asyncio.wait_for(asyncio.shield(future), wait_s)
            except TimeoutError:
                assert key is not None
                connection.forget(key, future)
        else:
            await asyncio.sleep(wait_s)
        _judge(exchange, answer, sent)
        return connection

    def _judge(
        exchange: Exchange, answer: tuple[bytes, Message | None] | None, sent: Message | None
    ) -> None:
        record = exchange.record
        where = {"frame": record.line, "conn": record.conn or ""}
        if exchange.message is not None:
            where.update(
                mti=exchange.message.mti,
                stan=exchange.message.get(11) or "",
                tid=exchange.message.get(41) or "",
            )
        if exchange.expected is None:
            if answer is None:
                report.no_answer_as_recorded += 1
            else:
                report.unexpected += 1
                report.unexpected_frames.append({**where, "reason": "no answer was recorded"})
            return
        if answer is None:
            report.missing += 1
            report.missing_frames.append(where)
            return
        raw, got = answer
        if restamper is not None and got is not None:
            restamper.after_answer(got)
        if exchange.expected_message is None or got is None:
            same = raw == exchange.expected.payload
            found = [] if same else [_undecodable_difference(exchange, got is None)]
        else:
            found = compare(exchange, got, options.ignored, sent=sent)
        if found:
            report.differing += 1
            report.differences.extend(found)
            for difference in found:
                if on_difference is not None:
                    on_difference(difference)
        else:
            report.matched += 1

    await asyncio.gather(*(run_lane(lane) for lane in lanes))
    return report


def _undecodable_difference(exchange: Exchange, got_undecodable: bool) -> Difference:
    message = exchange.message
    return Difference(
        frame=exchange.record.line,
        conn=exchange.record.conn or "",
        mti=message.mti if message else "",
        stan=(message.get(11) or "") if message else "",
        tid=(message.get(41) or "") if message else "",
        field="frame",
        expected="undecodable answer" if exchange.expected_message is None else "decodable answer",
        got="undecodable answer" if got_undecodable else "different bytes",
    )


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair; ValueError when malformed."""
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--to must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_fields(text: str) -> frozenset[int]:
    """A comma-separated list of field numbers (empty text: none)."""
    numbers = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= 128:
            raise ValueError(f"--ignore: {part!r} is not a field number 1-128")
        numbers.add(int(part))
    return frozenset(numbers)


def format_difference(difference: Difference) -> str:
    """One line per difference: frame, ids, field, expected, got."""
    return (
        f"line {difference.frame} {difference.mti} stan {difference.stan} "
        f"tid {difference.tid}: field {difference.field}: expected {difference.expected!r}, "
        f"got {difference.got!r}"
    )


def register(commands: Any) -> None:
    """Add ``honar replay`` to the command line."""
    parser = commands.add_parser(
        "replay", help="send a trace's requests to a switch, compare answers with the recording"
    )
    parser.add_argument("trace", help="trace file (JSON lines)")
    parser.add_argument("--to", required=True, metavar="HOST:PORT", help="the switch")
    parser.add_argument("--framing", default="ascii4", choices=["ascii4", "binary2"])
    parser.add_argument(
        "--restamp",
        action="store_true",
        help="fresh field 7 and 11, re-MACed with the demo terminal keys",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help=f"client connections (1-{CONNECTIONS_MAX}; default 1: strictly sequential)",
    )
    parser.add_argument("--fast", action="store_true", help="do not keep the recorded pacing")
    parser.add_argument(
        "--ignore",
        default=",".join(map(str, IGNORED_DEFAULT)),
        help="fields not compared (default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S_DEFAULT, help="seconds")
    parser.add_argument(
        "--no-answer-wait",
        type=float,
        default=NO_ANSWER_WAIT_S_DEFAULT,
        help="seconds to wait after a request that had no recorded answer",
    )
    parser.add_argument("--dialect", default="shetab87")
    parser.add_argument("--report", help="write the full report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_command)


async def run_command(args: argparse.Namespace) -> int:
    """Carry out ``honar replay``; print differences and the summary; return the exit code."""
    host, port = parse_target(args.to)
    if not 1 <= args.connections <= CONNECTIONS_MAX:
        raise ValueError(f"--connections must be 1-{CONNECTIONS_MAX}")
    if args.timeout <= 0 or args.no_answer_wait < 0:
        raise ValueError("--timeout must be > 0 and --no-answer-wait >= 0")
    options = ReplayOptions(
        host=host,
        port=port,
        framing=Framing(args.framing),
        restamp=args.restamp,
        connections=args.connections,
        fast=args.fast,
        ignored=parse_fields(args.ignore),
        timeout_s=args.timeout,
        no_answer_wait_s=args.no_answer_wait,
    )
    records = read_trace(args.trace)
    report = await replay(
        records,
        options,
        dialect=get_dialect(args.dialect),
        progress=None if args.quiet else sys.stderr,
        on_difference=lambda d: print(format_difference(d), flush=True),
    )
    for missing in report.missing_frames:
        print(f"line {missing['frame']}: no answer (one was recorded)", flush=True)
    for unexpected in report.unexpected_frames:
        print(f"unexpected answer: {json.dumps(unexpected)}", flush=True)
    counts = report.summary()
    print(
        "summary: "
        + ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in counts.items())
    )
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.clean else 1
