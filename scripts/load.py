"""``honar load``: a load generator for the switch, open or closed loop, with latency figures.

Every request is built (and MACed, with its PIN block) before the clock starts, so the generator
measures the switch, not itself. By default each request is a purchase by demo card M0006
(``6362144899564327``, PIN 9876, limits raised for load) at demo terminal HNR00004;
``--members N`` cycles through the synthetic members of spec/demo-data.md instead (member ``i``:
PAN ``6362149`` + ``i`` as 8 digits + Luhn digit, PIN = last 4 digits of ``i``), which the switch
must have been given first.

Modes:

* closed loop (``--in-flight N``, the default): N requests outstanding in total, spread over
  ``--connections C``; each answer lets the next request go; it runs until the requests built
  (``--count``) are used up or ``--duration`` has passed;
* open loop (``--rate R``): R requests per second for ``--duration`` seconds whatever the
  answers, round robin over the connections; latency is measured from the moment of sending.

At the end: requests sent and answered, response codes, throughput, latency percentiles
(p50/p90/p99/p99.9/max), a latency histogram and the answers completed in each second
(``--json`` prints the same as JSON). Requests not answered ``--timeout`` seconds after the last
send count as timed out. Targets are loopback addresses only, unless ``--allow-remote``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scripts.pos import PosTerminal
from switch.codec import CodecError, decode
from switch.dialects import Dialect, get_dialect
from switch.dialects.base import Framing
from switch.framing import Framer, FramingError, frame

M0006_PAN = "6362144899564327"
M0006_PIN = "9876"
TERMINAL_DEFAULT = "HNR00004"
AMOUNT_DEFAULT = 1000
REQUESTS_MAX = 999_999  # the STAN space of one terminal: no request may repeat another's key
CONNECTIONS_MAX = 1000
DURATION_S_MAX = 600.0
RATE_MAX = 100_000.0
TIMEOUT_S_DEFAULT = 5.0
HISTOGRAM_BOUNDS_MS = (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def luhn_digit(body: str) -> str:
    """The Luhn check digit that completes ``body``.

    >>> luhn_digit("636214489956432")
    '7'
    """
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def synthetic_member(i: int) -> tuple[str, str]:
    """PAN and PIN of synthetic member ``i`` (from 1), as in spec/demo-data.md.

    >>> synthetic_member(1)
    ('6362149000000012', '0001')
    """
    if not 1 <= i <= 99_999_999:
        raise ValueError(f"synthetic member number must be 1-99999999, got {i}")
    body = f"6362149{i:08d}"
    return body + luhn_digit(body), f"{i % 10000:04d}"


def build_requests(
    count: int,
    *,
    terminal_id: str = TERMINAL_DEFAULT,
    members: int = 0,
    amount: int = AMOUNT_DEFAULT,
    stan_start: int = 1,
) -> list[bytes]:
    """``count`` purchase payloads, each with its own STAN, MACed for ``terminal_id``."""
    if not 1 <= count <= REQUESTS_MAX:
        raise ValueError(f"request count must be 1-{REQUESTS_MAX}, got {count}")
    terminal = PosTerminal.demo(terminal_id)
    terminal.profile.stan = (stan_start - 1) % 999_999
    cards = [synthetic_member(i) for i in range(1, members + 1)] if members else []
    payloads = []
    for index in range(count):
        pan, pin = cards[index % members] if members else (M0006_PAN, M0006_PIN)
        payloads.append(terminal.purchase(pan=pan, pin=pin, amount=amount, expiry="2812"))
    return payloads


def peek_fields(payload: bytes, dialect: Dialect, wanted: frozenset[int]) -> dict[int, str]:
    """The ``wanted`` fields of a message, read by walking the bitmap without a full decode.

    A full decode costs ~20 µs, several times this; the generator reads two fields per answer.
    Raises ValueError (or KeyError) on anything it cannot walk; callers fall back to the codec.
    """
    primary = int(payload[4:20], 16)
    position = 20
    secondary = 0
    if primary >> 63 & 1:
        secondary = int(payload[20:36], 16)
        position = 36
    found: dict[int, str] = {}
    last = max(wanted)
    for number in range(2, last + 1):
        present = primary >> (64 - number) & 1 if number <= 64 else secondary >> (128 - number) & 1
        if not present:
            continue
        spec = dialect.by_number[number]
        if spec.prefix_digits:
            size = int(payload[position : position + spec.prefix_digits])
            position += spec.prefix_digits
        else:
            size = spec.length_max
        if number in wanted:
            chunk = payload[position : position + size]
            found[number] = chunk.hex().upper() if spec.format == "b" else chunk.decode("ascii")
            if len(found) == len(wanted):
                break
        position += size
    if position > len(payload):
        raise ValueError("message shorter than its fields")
    return found


@dataclass
class LoadResult:
    """What a load run measured. Latencies are in nanoseconds."""

    mode: str
    connections: int
    in_flight: int | None
    rate: float | None
    built: int
    build_s: float
    sent: int = 0
    answered: int = 0
    timed_out: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    per_second: list[int] = field(default_factory=list)
    send_lag_max_ms: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def approved(self) -> int:
        """Answers with response code 00."""
        return self.codes.get("00", 0)

    @property
    def throughput(self) -> float:
        """Answers per second over the run."""
        return self.answered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, percent: float) -> float:
        """Latency at ``percent`` (nearest rank) in milliseconds; 0 when nothing was answered."""
        values = self.latencies_ns
        if not values:
            return 0.0
        rank = max(1, math.ceil(percent / 100 * len(values)))
        return values[rank - 1] / 1e6

    def histogram(self) -> list[tuple[str, int]]:
        """Answer counts per latency bucket (upper bounds in ms)."""
        counts = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
        bounds_ns = [b * 1e6 for b in HISTOGRAM_BOUNDS_MS]
        index = 0
        for value in self.latencies_ns:  # sorted
            while index < len(bounds_ns) and value >= bounds_ns[index]:
                index += 1
            counts[index] += 1
        labels = [f"< {b:g} ms" for b in HISTOGRAM_BOUNDS_MS] + [
            f">= {HISTOGRAM_BOUNDS_MS[-1]:g} ms"
        ]
        return list(zip(labels, counts, strict=True))

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON-ready data."""
        return {
            "mode": self.mode,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "rate": self.rate,
            "built": self.built,
            "build_s": round(self.build_s, 3),
            "sent": self.sent,
            "answered": self.answered,
            "approved": self.approved,
            "timed_out": self.timed_out,
            "codes": dict(sorted(self.codes.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_per_s": round(self.throughput, 1),
            "latency_ms": {
                **{name: round(self.percentile_ms(p), 3) for name, p in PERCENTILES},
                "max": round(self.percentile_ms(100), 3),
            },
            "histogram": [{"below": label, "count": n} for label, n in self.histogram()],
            "per_second": self.per_second,
            "send_lag_max_ms": round(self.send_lag_max_ms, 3),
            "errors": self.errors,
        }

    def text(self) -> str:
        """The figures as a human-readable report."""
        if self.mode == "open":
            how = f"open loop at {self.rate:g}/s"
        else:
            how = f"closed loop, {self.in_flight} in flight"
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(self.codes.items())) or "none"
        pct = "  ".join(f"{name} {self.percentile_ms(p):.2f}" for name, p in PERCENTILES)
        lines = [
            f"load: {how} over {self.connections} connections; "
            f"{self.built} requests built in {self.build_s:.2f} s before the clock started",
            f"sent {self.sent}, answered {self.answered} (approved {self.approved}), "
            f"timed out {self.timed_out}, in {self.elapsed_s:.2f} s: "
            f"{self.throughput:.0f} answers/s",
            f"response codes: {codes}",
            f"latency ms: {pct}  max {self.percentile_ms(100):.2f}",
            "latency histogram:",
        ]
        most = max((n for _, n in self.histogram()), default=0) or 1
        for label, n in self.histogram():
            if n:
                lines.append(f"  {label:>12} {n:>9}  {'#' * max(1, n * 40 // most)}")
        lines.append("answers per second: " + " ".join(str(n) for n in self.per_second))
        if self.mode == "open":
            lines.append(f"largest send delay behind schedule: {self.send_lag_max_ms:.2f} ms")
        lines.extend(f"error: {e}" for e in self.errors)
        return "\n".join(lines)


class _Client(asyncio.Protocol):
    """One connection of the generator: frames out, answers in, matched by STAN."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.framer = Framer(run.framing, frame_size_max=9999)
        self.transport: asyncio.Transport | None = None
        self.outstanding: dict[str, int] = {}  # STAN -> send time (ns)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, index: int) -> None:
        assert self.transport is not None
        payload = self.run.requests[index]
        self.outstanding[self.run.stans[index]] = time.perf_counter_ns()
        self.transport.write(frame(payload, self.run.framing))
        self.run.result.sent += 1

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.framer.receive_data(data)
        while True:
            try:
                payload = self.framer.next_frame()
            except FramingError as error:
                self.run.result.errors.append(f"bad frame from the switch: {error}")
                assert self.transport is not None
                self.transport.close()
                return
            if payload is None:
                return
            self.run.answer(self, payload, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outstanding:
            self.run.result.errors.append(
                f"connection closed with {len(self.outstanding)} requests unanswered"
            )
        if not self.closed.done():
            self.closed.set_result(None)


class _Run:
    """The state of one load run."""

    def __init__(
        self,
        requests: Sequence[bytes],
        result: LoadResult,
        framing: Framing,
        dialect: Dialect,
        on_answer: Callable[[_Client], None] | None = None,
    ) -> None:
        self.requests = requests
        self.result = result
        self.framing = framing
        self.dialect = dialect
        self.stans = [self._stan(p) for p in requests]
        self.start_ns = 0
        self.answered_ns: list[int] = []
        self.on_answer = on_answer
        self.idle = asyncio.Event()
        self.outstanding_total = 0

    def _stan(self, payload: bytes) -> str:
        return peek_fields(payload, self.dialect, frozenset({11}))[11]

    def answer(self, client: _Client, payload: bytes, now: int) -> None:
        wanted = frozenset({11, 39})
        try:
            found = peek_fields(payload, self.dialect, wanted)
        except (ValueError, KeyError):
            try:
                found = dict(decode(payload, self.dialect).fields)
            except CodecError as error:
                self.result.errors.append(f"undecodable answer: {error}")
                return
        sent = client.outstanding.pop(found.get(11, ""), None)
        if sent is None:
            self.result.errors.append(f"answer for no outstanding request (STAN {found.get(11)})")
            return
        self.result.answered += 1
        self.result.codes[found.get(39, "--")] += 1
        self.result.latencies_ns.append(now - sent)
        self.answered_ns.append(now)
        self.outstanding_total -= 1
        if self.outstanding_total == 0:
            self.idle.set()
        if self.on_answer is not None:
            self.on_answer(client)


async def drive(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int = 8,
    in_flight: int | None = 32,
    rate: float | None = None,
    duration_s: float = 10.0,
    timeout_s: float = TIMEOUT_S_DEFAULT,
    framing: Framing = Framing.ASCII4,
    dialect: Dialect | None = None,
    build_s: float = 0.0,
) -> LoadResult:
    """Send ``requests`` (closed loop with ``in_flight``, or open loop at ``rate``) and measure."""
    dialect = dialect or get_dialect("shetab87")
    if not 1 <= connections <= CONNECTIONS_MAX:
        raise ValueError(f"connections must be 1-{CONNECTIONS_MAX}, got {connections}")
    if not 0 < duration_s <= DURATION_S_MAX:
        raise ValueError(f"duration must be > 0 and at most {DURATION_S_MAX:g} s")
    if rate is not None and not 0 < rate <= RATE_MAX:
        raise ValueError(f"rate must be > 0 and at most {RATE_MAX:g}/s")
    if rate is None and (in_flight is None or in_flight < 1):
        raise ValueError("closed loop needs in_flight >= 1")
    if not requests:
        raise ValueError("no requests to send")
    mode = "open" if rate is not None else "closed"
    connections = connections if rate is not None else min(connections, in_flight or 1)
    result = LoadResult(
        mode=mode,
        connections=connections,
        in_flight=None if rate is not None else in_flight,
        rate=rate,
        built=len(requests),
        build_s=build_s,
    )
    loop = asyncio.get_running_loop()
    next_index = 0
    deadline_ns = 0

    def send_next(client: _Client) -> None:
        nonlocal next_index
        if next_index >= len(requests) or time.perf_counter_ns() >= deadline_ns:
            return
        run.outstanding_total += 1
        run.idle.clear()
        client.send(next_index)
        next_index += 1

    run = _Run(requests, result, framing, dialect, send_next if rate is None else None)
    clients: list[_Client] = []
    try:
        for _ in range(connections):
            _transport, client = await loop.create_connection(lambda: _Client(run), host, port)
            clients.append(client)
        run.start_ns = time.perf_counter_ns()
        deadline_ns = run.start_ns + int(duration_s * 1e9)
        if rate is None:
            assert in_flight is not None
            for slot in range(in_flight):
                send_next(clients[slot % connections])
        else:
            await _open_loop(run, clients, rate, deadline_ns)
        # Wait for the answers still due: closed loop, until the chain of sends has ended and
        # nothing is outstanding; either way at most timeout_s past the last possible send.
        end_by = time.perf_counter_ns() if rate is not None else deadline_ns
        end_by += int(timeout_s * 1e9)
        while run.outstanding_total > 0:
            remaining_s = (end_by - time.perf_counter_ns()) / 1e9
            if remaining_s <= 0:
                break
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for loses a cancellation
            # (Ctrl-C) that arrives as the awaited event is set
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining_s):
                    await run.idle.wait()
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()
    result.timed_out = result.sent - result.answered
    last = max(run.answered_ns, default=run.start_ns)
    result.elapsed_s = max(last - run.start_ns, 1) / 1e9
    result.latencies_ns.sort()
    seconds = math.ceil(result.elapsed_s) if run.answered_ns else 0
    per_second = [0] * seconds
    for moment in run.answered_ns:
        per_second[min(int((moment - run.start_ns) // 1_000_000_000), seconds - 1)] += 1
    result.per_second = per_second
    return result


async def _open_loop(run: _Run, clients: list[_Client], rate: float, deadline_ns: int) -> None:
    """Send request i at start + i/rate, round robin, until the deadline or the list ends."""
    interval_ns = 1e9 / rate
    index = 0
    total = len(run.requests)
    while index < total:
        now = time.perf_counter_ns()
        due = run.start_ns + int(index * interval_ns)
        if due >= deadline_ns:
            break
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            continue
        run.result.send_lag_max_ms = max(run.result.send_lag_max_ms, (now - due) / 1e6)
        while index < total and run.start_ns + int(index * interval_ns) <= now:
            if run.start_ns + int(index * interval_ns) >= deadline_ns:
                return
            run.outstanding_total += 1
            run.idle.clear()
            clients[index % len(clients)].send(index)
            index += 1


def check_target(host: str, allow_remote: bool) -> None:
    """Refuse non-loopback targets unless explicitly allowed."""
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{host} is not a loopback address; load runs here are meant for 127.0.0.1 "
            "(--allow-remote to insist)"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``honar load`` options."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8583)
    parser.add_argument("--framing", default="ascii4", choices=["ascii4", "binary2"])
    parser.add_argument("--connections", type=int, default=8, help="TCP connections (default 8)")
    loop_mode = parser.add_mutually_exclusive_group()
    loop_mode.add_argument(
        "--in-flight", type=int, default=32, help="closed loop: requests outstanding (default 32)"
    )
    loop_mode.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument(
        "--count",
        type=int,
        help=f"requests to build (closed loop default 10000; open loop: rate x duration; "
        f"at most {REQUESTS_MAX})",
    )
    parser.add_argument("--terminal", default=TERMINAL_DEFAULT, help="demo terminal id")
    parser.add_argument("--amount", type=int, default=AMOUNT_DEFAULT, help="IRR per purchase")
    parser.add_argument(
        "--members",
        type=int,
        default=0,
        help="cycle through synthetic members 1..N (default: demo card M0006)",
    )
    parser.add_argument("--stan-start", type=int, help="first STAN (default: from the clock)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S_DEFAULT, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback host")


def register(commands: Any) -> None:
    """Add ``honar load`` to the command line."""
    parser = commands.add_parser("load", help="load generator (open or closed loop)")
    add_arguments(parser)
    parser.set_defaults(func=run_command)


def request_count(args: argparse.Namespace) -> int:
    """How many requests to build for these arguments."""
    if args.count is not None:
        return int(args.count)
    if args.rate is not None:
        wanted: float = args.rate * args.duration
        return min(REQUESTS_MAX, max(1, math.ceil(wanted)))
    return 10_000


def default_stan_start() -> int:
    """A first STAN from the clock, so that runs in a row do not reuse each other's STANs."""
    return int(time.time() * 10) % 999_999 + 1


async def run_command(args: argparse.Namespace) -> int:
    """Carry out ``honar load``; print the figures; 0 when every request was answered 00."""
    check_target(args.host, args.allow_remote)
    if args.members < 0:
        raise ValueError("--members must be >= 0")
    count = request_count(args)
    started = time.perf_counter()
    requests = build_requests(
        count,
        terminal_id=args.terminal,
        members=args.members,
        amount=args.amount,
        stan_start=args.stan_start if args.stan_start is not None else default_stan_start(),
    )
    build_s = time.perf_counter() - started
    result = await drive(
        args.host,
        args.port,
        requests,
        connections=args.connections,
        in_flight=None if args.rate is not None else args.in_flight,
        rate=args.rate,
        duration_s=args.duration,
        timeout_s=args.timeout,
        framing=Framing(args.framing),
        build_s=build_s,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.text())
    ok = result.answered == result.sent and result.approved == result.answered
    return 0 if ok and result.sent else 1


if __name__ == "__main__":  # pragma: no cover
    main_parser = argparse.ArgumentParser(prog="python -m scripts.load")
    add_arguments(main_parser)
    sys.exit(asyncio.run(run_command(main_parser.parse_args())))
