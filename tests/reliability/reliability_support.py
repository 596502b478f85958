"""Shared pieces of the reliability tests: fuzz budgets, seed messages, mutations, raw sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from scripts.pos import PosTerminal
from switch.dialects import get_dialect

# Demo cards (spec/demo-data.md): PAN, PIN.
M0001 = ("6362147682085715", "1234")
M0002 = ("6362149173324546", "4321")
M0006 = ("6362144899564327", "9876")

EXAMPLES_DEFAULT = 150


def fuzz_examples(default: int = EXAMPLES_DEFAULT) -> int:
    """How many examples a fuzz property runs: ``default`` scaled by $HONAR_FUZZ_EXAMPLES.

    ``HONAR_FUZZ_EXAMPLES=20000`` makes every property run (about) that many; the default keeps
    the whole fuzz module well inside a minute in CI.
    """
    scaled = os.environ.get("HONAR_FUZZ_EXAMPLES")
    if not scaled:
        return default
    return max(int(scaled) * default // EXAMPLES_DEFAULT, 1)


def fuzz_settings(default: int = EXAMPLES_DEFAULT) -> settings:
    """Hypothesis settings for a bounded fuzz run (no deadline: CI machines are noisy)."""
    return settings(
        max_examples=fuzz_examples(default),
        deadline=None,
        derandomize=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


def seed_messages(dialect_name: str) -> list[bytes]:
    """Valid, MACed requests of every kind in ``dialect_name`` (payloads, no length prefix)."""
    dialect = get_dialect(dialect_name)
    terminal = PosTerminal.demo("HNR00004")
    terminal.dialect = dialect
    dukpt = PosTerminal.demo("HNR00003")
    dukpt.dialect = dialect
    purchase = terminal.purchase(pan=M0002[0], pin=M0002[1], amount=70_000)
    preauth = terminal.preauth(pan=M0006[0], pin=M0006[1], amount=100_000)
    return [
        purchase,
        terminal.balance(pan=M0002[0], pin=M0002[1]),
        terminal.refund(pan=M0002[0], amount=1_000, original_rrn="000000000001"),
        terminal.reversal(purchase),
        terminal.reversal(purchase, advice=True, actual_amount=10_000),
        preauth,
        terminal.completion(preauth, amount=110_000),
        terminal.reconciliation(
            credits_count=0, debits_count=1, credits_amount=0, debits_amount=70_000
        ),
        terminal.network("301"),
        terminal.network("101"),
        terminal.card_request(
            processing_code="000000",
            pan=M0006[0],
            pin=M0006[1],
            amount=5,
            expiry="2812",
            use_track2=True,
        ),
        dukpt.purchase(pan=M0006[0], pin=M0006[1], amount=1_000),
    ]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed message with 1-4 random edits: flip, overwrite, insert, delete, cut, splice."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[where] = draw(st.sampled_from(list(b"0123456789AF =*\x00\xff")))
        elif op == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[where:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            data[where:] = other[start:]
    return bytes(data)


def exchange_raw(
    host: str, port: int, data: bytes, *, timeout_s: float = 10.0, half_close: bool = True
) -> tuple[bytes, bool]:
    """Send ``data``, optionally half-close, read until the switch closes or ``timeout_s``.

    Returns (bytes received, whether the switch closed the connection).
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return b"", True
        received = bytearray()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return bytes(received), True
            if not chunk:
                return bytes(received), True
            received += chunk
        return bytes(received), False


def wait_until(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    assert ordered, "no values"
    rank = max(round(fraction * len(ordered) + 0.5) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]
