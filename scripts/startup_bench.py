"""``honar startup-bench``: how long the switch takes to start on a ledger with many cards.

DESIGN.md's target: start-up under 2 s with 1,000,000 cards. The script

1. prepares a SQLite ledger with the demo data and synthetic members 1..``--members`` (default
   1,000,000; ``honar demo synthetic``, idempotent, so a ``--data-dir`` kept from an earlier run
   is reused as it is);
2. starts ``honar serve`` on it ``--runs`` times, as a child process, and for each start prints
   the seconds from the process's spawn to the first accepted connection (interpreter start,
   imports, schema check, directory, rules, committer, listening), and to the approved answer
   of a first purchase by the last synthetic member (a card the switch has not cached: the
   look-up by keyed PAN hash goes to the database);
3. with ``--cold``, drops the operating system's page cache before each start (Linux, as root:
   ``/proc/sys/vm/drop_caches``), so the database file is read from the disk.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.synthetic import SYNTHETIC_EXPIRY, SYNTHETIC_MEMBERS_MAX, synthetic_pan, synthetic_pin
from scripts.bench import free_port, honar_command, prepare_ledger, server_process
from scripts.load import default_stan_start
from scripts.pos import PosClient, PosTerminal

MEMBERS_DEFAULT = 1_000_000
RUNS_MAX = 20
PREPARE_TIMEOUT_S = 1_800.0  # 1,000,000 members take about 2 minutes on the 2-core machine
LISTEN_POLL_S = 0.005  # how often a start is checked for an accepted connection
ANSWER_TIMEOUT_S = 10.0
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
TERMINAL = "HNR00004"


@dataclass(frozen=True)
class Start:
    """One start of the switch."""

    listening_s: float  # spawn -> first accepted connection
    answered_s: float  # spawn -> the first purchase's answer
    response_code: str
    cold: bool


def prepare(data_dir: Path, members: int, log_path: Path) -> float:
    """Demo data and synthetic members 1..``members`` in ``data_dir``; the seconds it took."""
    started = time.perf_counter()
    prepare_ledger(
        f"sqlite:///{data_dir / 'honar.db'}", members, log_path, timeout_s=PREPARE_TIMEOUT_S
    )
    return time.perf_counter() - started


@contextlib.contextmanager
def ledger_directory(given: Path | None, prefix: str) -> Iterator[Path]:
    """``given`` (made if missing, kept after), or a temporary directory removed after."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as temporary:
        yield Path(temporary)


def drop_page_cache() -> None:
    """Write dirty pages out, then drop the page cache (Linux, root only)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as error:
        raise RuntimeError(
            f"--cold needs to write {DROP_CACHES} (Linux, as root): {error.strerror}"
        ) from error


async def first_purchase(port: int, member: int, stan: str) -> str:
    """One purchase of 1,000 IRR by synthetic member ``member``; its response code. Each start
    sends its own ``stan``: two starts within one second must not send the same request key
    (the second would be answered as a retransmission)."""
    terminal = PosTerminal.demo(TERMINAL)
    client = await PosClient.connect("127.0.0.1", port)
    try:
        payload = terminal.purchase(
            pan=synthetic_pan(member),
            pin=synthetic_pin(member),
            amount=1_000,
            expiry=SYNTHETIC_EXPIRY,
            stan=stan,
        )
        raw = await client.request(payload, ANSWER_TIMEOUT_S)
    finally:
        await client.close()
    message, mac_ok = terminal.check_response(raw, payload)
    if mac_ok is False:
        raise RuntimeError("the first purchase's response MAC did not verify")
    return message.get(39) or "--"


def start_once(
    data_dir: Path, member: int, log_path: Path, *, cold: bool, stan: str = "000001"
) -> Start:
    """Start ``honar serve`` on ``data_dir``, time it, send the first purchase, stop it."""
    if cold:
        drop_page_cache()
    port = free_port()
    command = honar_command("serve", "--port", str(port), "--data-dir", str(data_dir))
    started = time.perf_counter()
    with server_process(command, port, log_path, pin=None, poll_s=LISTEN_POLL_S):
        listening = time.perf_counter() - started
        code = asyncio.run(first_purchase(port, member, stan))
        answered = time.perf_counter() - started
    return Start(listening, answered, code, cold)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument(
        "--members",
        type=int,
        default=MEMBERS_DEFAULT,
        help=f"synthetic members, one card each (default {MEMBERS_DEFAULT:,})",
    )
    parser.add_argument("--runs", type=int, default=3, help="starts to time (default 3)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the ledger here (reused when it holds the members); default a temporary "
        "directory, removed afterwards",
    )
    parser.add_argument(
        "--cold", action="store_true", help="drop the page cache before each start (root)"
    )


def check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range options with a message that names the option."""
    if not 1 <= args.members <= SYNTHETIC_MEMBERS_MAX:
        raise ValueError(f"--members must be 1-{SYNTHETIC_MEMBERS_MAX:,}, got {args.members}")
    if not 1 <= args.runs <= RUNS_MAX:
        raise ValueError(f"--runs must be 1-{RUNS_MAX}, got {args.runs}")


def run(args: argparse.Namespace) -> int:
    """Prepare, start the switch ``--runs`` times, print a row per start (exit 1, with the
    reason on stderr, when a step fails)."""
    check_options(args)
    try:
        return _run(args)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"honar startup-bench: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    with ledger_directory(args.data_dir, "honar-startup-") as data_dir:
        prepared_s = prepare(data_dir, args.members, data_dir / "prepare.log")
        size = (data_dir / "honar.db").stat().st_size
        print(
            f"ledger: {args.members:,} synthetic members (+ the demo data), "
            f"{size / 2**20:,.0f} MiB, ready in {prepared_s:.1f} s"
        )
        first_stan = default_stan_start()
        print(f"{'start':>5} {'cache':>5} {'listening s':>11} {'first answer s':>14} {'code':>4}")
        for number in range(1, args.runs + 1):
            start = start_once(
                data_dir,
                args.members,
                data_dir / "serve.log",
                cold=args.cold,
                stan=f"{(first_stan + number) % 999_999 + 1:06d}",
            )
            print(
                f"{number:>5} {'cold' if start.cold else 'warm':>5} {start.listening_s:>11.3f} "
                f"{start.answered_s:>14.3f} {start.response_code:>4}"
            )
    return 0


def register(commands: Any) -> None:
    """Add ``startup-bench`` to the ``honar`` subcommands."""
    parser = commands.add_parser(
        "startup-bench", help="start-up time of the switch on a ledger with many cards"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


if __name__ == "__main__":
    main_parser = argparse.ArgumentParser(prog="python -m scripts.startup_bench")
    add_arguments(main_parser)
    raise SystemExit(run(main_parser.parse_args()))
