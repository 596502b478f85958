"""Operations per second of the simulated HSM: in process and over TCP.

    python -m scripts.hsm_bench [--quick] [--seconds S] [--connections N] [--depth D]

Three operations, each the way the switch (or a payShield client) would ask for it:

* ``CA`` translate a PIN block TPK -> ZPK (ISO format 0 both sides),
* ``DC`` verify a terminal PIN against a Visa PVV,
* ``M6`` generate an ISO 9797-1 algorithm 3 MAC (X9.19, padding 1) of a 128-byte message.

Paths measured:

* ``handle``: `HostCommands.handle` on the request fields (parsing, key decryption under the
  LMK, the cryptography; no framing, no I/O);
* ``facade``: the `Hsm` method the switch's `InProcessHsmPort` calls (``DC`` ->
  `Hsm.verify_pin_pvv`, ``M6`` -> `Hsm.generate_mac`; ``CA`` has none); it keeps working keys
  clear in a cache;
* ``tcp pipelined``: raw framed requests to ``honar hsm serve`` started by this script as a
  subprocess, on N connections with D requests in flight on each;
* ``tcp TcpHsmPort``: the switch's TCP client (`hsm_sim.client.TcpHsmPort`, pool of N
  connections, one request in flight per connection, N concurrent tasks).

Every answer is checked (error code ``00``, the expected fields for ``CA`` and ``M6``). The whole
run takes about ``--seconds`` (default 20; ``--quick`` 5), split evenly between the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hsm_sim.client import TcpHsmPort
from hsm_sim.commands import HostCommands
from hsm_sim.hsm import Hsm, PinCheck
from hsm_sim.keys import Lmk
from hsm_sim.protocol import HostMessageParser, build_request, parse_response
from scripts.bench import honar_command

__all__ = ["BenchRow", "main", "run_bench"]

REPOSITORY = Path(__file__).resolve().parents[1]
SECONDS_DEFAULT = 20.0
SECONDS_QUICK = 5.0
CONNECTIONS_DEFAULT = 4
DEPTH_DEFAULT = 16
STARTUP_TIMEOUT_S = 20.0
STARTUP_ALLOWANCE_S = 1.5
ROW_SECONDS_MIN = 0.2
ROWS = 10

# Keys under the Thales test LMK (ThalesSim transcripts, see tests/hsm_sim/test_hsm_commands.py).
TPK = "U8463435FC4B4DAA0C49025272C29B12C"
ZPK = "U1EF828AA8F6B80EB83E19FBC373F3A85"
PVK = "X367930344805B1FAD6146EF4ED7502B3"
TAK = "U19D25F349FD03CC3556BB05F65283CA1"
ACCOUNT = "550000025321"
PAN = f"4{ACCOUNT}7"  # account number = the 12 digits left of the check digit
PIN_BLOCK_TPK = "6428EB94035AF53B"  # PIN 1234, ISO format 0, under TPK
PIN_BLOCK_ZPK = "91DDDA0A7C12CFAA"  # the same PIN under ZPK
PVV = "4402"
MAC_DATA = bytes(range(128))


@dataclass(frozen=True)
class Operation:
    """One host command: its code, request fields and the answer (error code + fields)."""

    code: str
    fields: bytes
    answer: bytes


def _operations() -> list[Operation]:
    mac = Hsm(lmk=Lmk.test()).generate_mac(TAK, MAC_DATA).hex().upper().encode()
    m6 = f"00131003{TAK}{len(MAC_DATA):04X}".encode() + MAC_DATA
    return [
        Operation(
            "CA",
            f"{TPK}{ZPK}12{PIN_BLOCK_TPK}0101{ACCOUNT}".encode(),
            f"0004{PIN_BLOCK_ZPK}01".encode(),
        ),
        Operation("DC", f"{TPK}{PVK}{PIN_BLOCK_TPK}01{ACCOUNT}1{PVV}".encode(), b"00"),
        Operation("M6", m6, b"00" + mac),
    ]


@dataclass(frozen=True)
class BenchRow:
    """One measurement: operation, path, operations completed, elapsed seconds."""

    operation: str
    path: str
    operations: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Operations per second."""
        return self.operations / self.seconds if self.seconds else 0.0

    @property
    def microseconds(self) -> float:
        """Wall-clock microseconds per operation (for TCP: throughput, not latency)."""
        return self.seconds / self.operations * 1e6 if self.operations else 0.0


# --- in process ----------------------------------------------------------------------------


def _time_loop(call: Callable[[], object], seconds: float) -> tuple[int, float]:
    for _ in range(20):  # warm-up: caches, first-call imports
        call()
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            call()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count, now - started


def bench_handle(operation: Operation, seconds: float) -> BenchRow:
    """`HostCommands.handle` on the request fields, back to back."""
    commands = HostCommands(Lmk.test())
    result = commands.handle(operation.code, operation.fields)
    got = result.error_code.encode() + result.fields
    assert got == operation.answer, f"{operation.code}: {got!r} != {operation.answer!r}"
    count, elapsed = _time_loop(lambda: commands.handle(operation.code, operation.fields), seconds)
    return BenchRow(operation.code, "handle", count, elapsed)


def bench_facade(code: str, seconds: float) -> BenchRow:
    """The `Hsm` method `InProcessHsmPort` calls for ``code`` (``DC`` or ``M6``)."""
    hsm = Hsm(lmk=Lmk.test())
    block = bytes.fromhex(PIN_BLOCK_TPK)
    call: Callable[[], object]
    if code == "DC":
        assert hsm.verify_pin_pvv(TPK, PVK, block, PAN, 1, PVV) is PinCheck.OK
        call = lambda: hsm.verify_pin_pvv(TPK, PVK, block, PAN, 1, PVV)  # noqa: E731
    elif code == "M6":
        assert len(hsm.generate_mac(TAK, MAC_DATA)) == 8
        call = lambda: hsm.generate_mac(TAK, MAC_DATA)  # noqa: E731
    else:
        raise ValueError(f"no facade method for {code}")
    count, elapsed = _time_loop(call, seconds)
    return BenchRow(code, "facade", count, elapsed)


# --- the server subprocess -----------------------------------------------------------------


@contextlib.contextmanager
def served_hsm(connections_max: int) -> Iterator[int]:
    """Run ``honar hsm serve --port 0`` in a subprocess; yield its port; SIGTERM it after."""
    command = honar_command(
        "hsm", "serve", "--port", "0", "--connections-max", str(connections_max)
    )
    process = subprocess.Popen(
        command,
        cwd=REPOSITORY,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = _wait_listening(process, process.stdout)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _wait_listening(process: subprocess.Popen[str], stdout: IO[str]) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"hsm serve exited with {process.wait()} before listening")
        if "listening on" in line:
            address = line.split("listening on", 1)[1].split()[0]
            return int(address.rsplit(":", 1)[1])
    raise RuntimeError("hsm serve did not report listening in time")


# --- over TCP ------------------------------------------------------------------------------


async def _pipelined_connection(
    port: int, operation: Operation, depth: int, deadline: float
) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = HostMessageParser(4)
    pending: collections.deque[bytes] = collections.deque()
    number = 0
    done = 0

    def requests(count: int) -> bytes:
        nonlocal number
        batch = []
        for _ in range(count):
            header = f"{number % 10_000:04d}".encode()
            number += 1
            pending.append(header)
            batch.append(build_request(header, operation.code, operation.fields))
        return b"".join(batch)

    try:
        writer.write(requests(depth))
        while pending:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError(f"server closed with {len(pending)} answers owed")
            parser.receive_data(data)
            answered = 0
            while (frame := parser.next_frame()) is not None:
                response = parse_response(frame)
                header = pending.popleft()
                if response.header != header:
                    raise AssertionError(f"answer {response.header!r} for request {header!r}")
                answer = response.error_code.encode() + response.body
                if answer != operation.answer:
                    raise AssertionError(f"{operation.code} answered {answer!r}")
                answered += 1
            done += answered
            if answered and time.perf_counter() < deadline:
                writer.write(requests(answered))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return done


async def bench_tcp_pipelined(
    port: int, operation: Operation, seconds: float, connections: int, depth: int
) -> BenchRow:
    """N connections, each keeping ``depth`` requests in flight, until the time is up."""
    await _pipelined_connection(port, operation, depth, 0.0)  # warm-up and check
    started = time.perf_counter()
    deadline = started + seconds
    counts = await asyncio.gather(
        *(_pipelined_connection(port, operation, depth, deadline) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    path = f"tcp pipelined {connections}x{depth}"
    return BenchRow(operation.code, path, sum(counts), elapsed)


async def bench_tcp_port(port: int, code: str, seconds: float, connections: int) -> BenchRow:
    """The switch's `TcpHsmPort`: ``connections`` tasks calling it back to back."""
    client = TcpHsmPort("127.0.0.1", port, pool_size=connections, timeout_s=10.0)
    block = bytes.fromhex(PIN_BLOCK_TPK)

    async def once() -> None:
        if code == "DC":
            check = await client.verify_pin_pvv(TPK, PVK, block, PAN, 1, PVV)
            assert check is PinCheck.OK, check
        elif code == "M6":
            mac = await client.generate_mac(TAK, MAC_DATA)
            assert len(mac) == 8
        else:
            raise ValueError(f"TcpHsmPort has no method for {code}")

    async def worker(deadline: float) -> int:
        count = 0
        while time.perf_counter() < deadline:
            await once()
            count += 1
        return count

    try:
        await asyncio.gather(*(once() for _ in range(connections)))  # open the pool
        started = time.perf_counter()
        counts = await asyncio.gather(*(worker(started + seconds) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return BenchRow(code, f"tcp TcpHsmPort x{connections}", sum(counts), elapsed)


# --- the run -------------------------------------------------------------------------------


def run_bench(seconds: float, connections: int, depth: int) -> list[BenchRow]:
    """Measure every row; ``seconds`` is the budget of the whole run."""
    row_seconds = max(ROW_SECONDS_MIN, (seconds - STARTUP_ALLOWANCE_S) / ROWS)
    operations = _operations()
    rows = [bench_handle(operation, row_seconds) for operation in operations]
    rows += [bench_facade(code, row_seconds) for code in ("DC", "M6")]
    with served_hsm(connections_max=max(64, connections * 2 + 2)) as port:

        async def over_tcp() -> list[BenchRow]:
            tcp_rows = [
                await bench_tcp_pipelined(port, operation, row_seconds, connections, depth)
                for operation in operations
            ]
            for code in ("DC", "M6"):
                tcp_rows.append(await bench_tcp_port(port, code, row_seconds, connections))
            return tcp_rows

        rows += asyncio.run(over_tcp())
    order = {operation.code: index for index, operation in enumerate(operations)}
    return sorted(rows, key=lambda row: order[row.operation])


def format_table(rows: Sequence[BenchRow]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| operation | path | operations | seconds | ops/s | µs/op |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.operation} | {row.path} | {row.operations:,} | {row.seconds:.2f} "
            f"| {row.per_second:,.0f} | {row.microseconds:,.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the benchmark, print the table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m scripts.hsm_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"about {SECONDS_QUICK:g} s")
    parser.add_argument("--seconds", type=float, help=f"whole run (default {SECONDS_DEFAULT:g})")
    parser.add_argument("--connections", type=int, default=CONNECTIONS_DEFAULT)
    parser.add_argument("--depth", type=int, default=DEPTH_DEFAULT, help="in flight per conn.")
    args = parser.parse_args(argv)
    seconds = args.seconds or (SECONDS_QUICK if args.quick else SECONDS_DEFAULT)
    if seconds <= 0 or args.connections < 1 or args.depth < 1:
        parser.error("--seconds, --connections and --depth must be positive")
    started = time.perf_counter()
    rows = run_bench(seconds, args.connections, args.depth)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
    )
    print(format_table(rows))
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
