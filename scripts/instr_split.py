"""``honar instr-split`` / ``python -m scripts.instr_split``: where a purchase's instructions go.

Runs the switch's request path (as :mod:`scripts.path_bench` does: decode, MAC, PIN, rules,
durable SQLite commit, response MAC, log line, metrics; no network) and the codec baseline's
handler (decode, set 39, encode: what ``honar bench``'s baseline server does per request) under
valgrind's callgrind, each twice: with ``--small`` and with ``--large`` requests after the same
warm-up. The difference between the two runs, divided by the difference in requests, is the
instruction count of one request with the start-up, imports and warm-up taken out. The
requests are built in this process before the children start, so their building (a PIN block
and a MAC each) is not counted either.

Each request's instructions are split by the shared object that executed them: the
interpreter, SQLite, OpenSSL (inside ``cryptography`` and ``hashlib``), the JSON encoder, the C
library, the project's compiled modules (``scripts/compile``), other extension modules. The
split shows how much of the work is outside Python's reach, and so what the ratio of the
switch to the baseline can be at best (docs/benchmarks.md, "How far the ratio can go").

Instruction counts do not move with the machine's load, unlike times. They leave out the
kernel (``fsync``, socket calls). Needs valgrind (``apt-get install -y valgrind``); a run
takes about 4 minutes on the 2-core machine. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.load import build_requests, default_stan_start

KINDS = ("switch", "baseline")
REQUESTS_MAX = 20_000  # per run: under callgrind a purchase takes about 10 ms
IN_FLIGHT_MAX = 4_096
CHILD_TIMEOUT_S = 3_600.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FRAME_HEADER = 4  # each request in a requests file: 4-byte big-endian length, then the bytes

# the parts, in the order printed; see part_of
INTERPRETER = "interpreter"
SQLITE = "SQLite"
OPENSSL = "OpenSSL"
JSON_ENCODER = "JSON encoder"
C_LIBRARY = "C library"
COMPILED = "compiled modules"
OTHER = "other extension modules"
UNKNOWN = "unknown"
PARTS = (INTERPRETER, COMPILED, SQLITE, OPENSSL, JSON_ENCODER, C_LIBRARY, OTHER, UNKNOWN)
# the libraries a switch in any language would call for the same work: its floor
NATIVE_PARTS = (SQLITE, OPENSSL, JSON_ENCODER)


class CallgrindFormatError(ValueError):
    """A callgrind output file this parser does not understand (says which line)."""


class ToolMissing(OSError):
    """valgrind is not installed."""


# --- callgrind's output ---------------------------------------------------------------------

_NAMED = re.compile(r"\((\d+)\)(?: (.*))?$")


def object_costs(path: Path) -> dict[str, int]:
    """Self cost (the first event, Ir) of each shared object in a callgrind output file.

    Reads the format callgrind writes (valgrind's "Callgrind Format Specification"):
    ``ob=`` names the object that the cost lines after it belong to, with ``(id)`` name
    compression (an id may first be named by a ``cob=`` line, the callee's object). The cost
    line after a ``calls=`` line is the call's inclusive cost, which belongs to the callee and
    is skipped; ``cob=``/``cfn=`` do not change the current object. The line after a
    ``jump=``/``jcnd=`` line (``--collect-jumps``) is a position only. The sum is checked
    against the file's ``summary:`` or ``totals:`` line.
    """
    names: dict[str, str] = {}
    current = "???"
    positions = 1
    costs: dict[str, int] = {}
    summary: int | None = None
    skip_next_cost = False
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            first = line[0]
            if first.isdigit() or first in "+-*":
                if skip_next_cost:
                    skip_next_cost = False
                    continue
                fields = line.split()
                if len(fields) <= positions:
                    continue  # a cost line with no events counts 0
                try:
                    value = int(fields[positions])
                except ValueError:
                    raise CallgrindFormatError(
                        f"{path}:{number}: a cost line without a number: {line[:80]!r}"
                    ) from None
                costs[current] = costs.get(current, 0) + value
                continue
            key, _, value_text = line.partition("=")
            if key == "ob":
                current = _resolve(names, value_text, path, number)
            elif key == "cob":
                _resolve(names, value_text, path, number)  # may name an id ob= uses later
            elif key == "calls":
                skip_next_cost = True
            elif key in ("jump", "jcnd"):
                skip_next_cost = True  # the next line is the jump's source position, no cost
            elif line.startswith("positions:"):
                positions = len(line.split(":", 1)[1].split())
            elif line.startswith(("summary:", "totals:")):
                summary = int(line.split(":", 1)[1].split()[0])
    if summary is None:
        raise CallgrindFormatError(f"{path}: no summary: or totals: line (not a callgrind file?)")
    if sum(costs.values()) != summary:
        raise CallgrindFormatError(
            f"{path}: the objects' costs add up to {sum(costs.values())}, the file says {summary}"
        )
    return costs


def _resolve(names: dict[str, str], text: str, path: Path, number: int) -> str:
    """An ``ob=`` value: ``(id) name`` defines an id, ``(id)`` refers to one, ``name`` is plain."""
    match = _NAMED.match(text)
    if match is None:
        return text
    ident, name = match.groups()
    if name is not None:
        names[ident] = name
        return name
    if ident not in names:
        raise CallgrindFormatError(f"{path}:{number}: object id ({ident}) used before it is named")
    return names[ident]


def part_of(obj: str, project_root: Path = PROJECT_ROOT) -> str:
    """Which part a shared object's instructions are counted under."""
    name = Path(obj).name
    if obj in ("", "???"):
        return UNKNOWN
    if name.startswith(("libpython", "python")):
        return INTERPRETER
    if name.startswith(("libsqlite3", "_sqlite3")):
        return SQLITE
    if name.startswith(("_rust.abi3", "libcrypto", "libssl", "_hashlib", "_ssl")):
        return OPENSSL
    if name.startswith("_json."):
        return JSON_ENCODER
    if name.startswith(("libc.so", "libc-", "ld-linux", "libm.so", "libpthread")):
        return C_LIBRARY
    try:
        inside = Path(obj).resolve().is_relative_to(project_root)
    except OSError:
        inside = False
    if inside and ".venv" not in Path(obj).parts:
        return COMPILED
    return OTHER


def split(costs: dict[str, int], project_root: Path = PROJECT_ROOT) -> dict[str, int]:
    """Costs per object, summed per part (every part present, 0 where none)."""
    parts = dict.fromkeys(PARTS, 0)
    for obj, value in costs.items():
        parts[part_of(obj, project_root)] += value
    return parts


def per_request(small: dict[str, int], large: dict[str, int], requests: int) -> dict[str, float]:
    """(large - small) / requests for each part."""
    return {part: (large[part] - small[part]) / requests for part in PARTS}


# --- requests files -------------------------------------------------------------------------


def write_requests(path: Path, payloads: Iterable[bytes]) -> None:
    """Requests to a file, each as a 4-byte big-endian length and the bytes."""
    with path.open("wb") as out:
        for payload in payloads:
            out.write(len(payload).to_bytes(FRAME_HEADER, "big") + payload)


def read_requests(path: Path) -> list[bytes]:
    """The requests :func:`write_requests` wrote; ValueError names a cut-off file's offset."""
    data = path.read_bytes()
    payloads: list[bytes] = []
    offset = 0
    while offset < len(data):
        end = offset + FRAME_HEADER
        if end > len(data):
            raise ValueError(f"{path}: a length header cut off at byte {offset}")
        size = int.from_bytes(data[offset:end], "big")
        if end + size > len(data):
            raise ValueError(
                f"{path}: request {len(payloads) + 1} at byte {offset} says {size} bytes, "
                f"{len(data) - end} are left"
            )
        payloads.append(data[end : end + size])
        offset = end + size
    return payloads


# --- the measured children ------------------------------------------------------------------


def child(kind: str, requests_file: Path, warmup: int, in_flight: int, log_level: str) -> int:
    """Run one measured process's work (under callgrind): ``warmup`` requests, then the rest;
    the number of the rest, every one answered (or RuntimeError)."""
    requests = read_requests(requests_file)
    warm, payloads = requests[:warmup], requests[warmup:]
    if kind == "switch":
        from scripts.path_bench import measure

        measure(warm, payloads, in_flight, log_level)
    elif kind == "baseline":
        from scripts.bench import baseline_handler
        from scripts.path_bench import drive_handler

        handle = baseline_handler()
        asyncio.run(drive_handler(handle, warm, in_flight))
        asyncio.run(drive_handler(handle, payloads, in_flight))
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return len(payloads)


def callgrind(
    kind: str,
    requests_file: Path,
    out_file: Path,
    warmup: int,
    in_flight: int,
    log_level: str,
) -> dict[str, int]:
    """Run :func:`child` under callgrind; the instructions per part of the whole process."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        "scripts.instr_split",
        "_child",
        kind,
        str(requests_file),
        str(warmup),
        str(in_flight),
        log_level,
    ]
    # the same hash seed in every run, so that dict and set layouts (and their probing) match
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the {kind} run under callgrind failed ({done.returncode}):\n{tail}")
    return split(object_costs(out_file))


@dataclass(frozen=True)
class Options:
    """What to run."""

    small: int = 500
    large: int = 2_500
    warmup: int = 100
    in_flight: int = 64
    terminal: str = "HNR00004"
    log_level: str = "INFO"


def check_options(options: Options) -> None:
    """ValueError naming the first option out of its bounds."""
    for name, value, low, high in (
        ("--small", options.small, 1, REQUESTS_MAX - 1),
        ("--large", options.large, 2, REQUESTS_MAX),
        ("--warmup", options.warmup, 0, REQUESTS_MAX),
        ("--in-flight", options.in_flight, 1, IN_FLIGHT_MAX),
    ):
        if not low <= value <= high:
            raise ValueError(f"{name} must be {low}-{high}, got {value}")
    if options.large <= options.small:
        raise ValueError(
            f"--large must be more than --small, got {options.large} and {options.small}"
        )


def measure(options: Options, kinds: Sequence[str] = KINDS) -> dict[str, dict[str, float]]:
    """Instructions per request and part, for each of ``kinds``."""
    check_options(options)
    if shutil.which("valgrind") is None:
        raise ToolMissing(
            "valgrind is not installed (apt-get install -y valgrind); "
            "instr-split runs the switch under valgrind's callgrind"
        )
    stan = default_stan_start()
    requests = build_requests(
        options.warmup + options.large, terminal_id=options.terminal, stan_start=stan
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="honar-instr-") as temporary:
        directory = Path(temporary)
        files = {}
        for count in (options.small, options.large):
            files[count] = directory / f"requests-{count}.bin"
            write_requests(files[count], requests[: options.warmup + count])
        for kind in kinds:
            runs = []
            for count in (options.small, options.large):
                print(
                    f"instr-split: {kind}, {count} requests under callgrind",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(
                    callgrind(
                        kind,
                        files[count],
                        directory / f"{kind}-{count}.out",
                        options.warmup,
                        options.in_flight,
                        options.log_level,
                    )
                )
            results[kind] = per_request(runs[0], runs[1], options.large - options.small)
    return results


def report(results: dict[str, dict[str, float]], options: Options, build: str) -> str:
    """The table and what it means for the ratio to the baseline."""
    kinds = list(results)
    lines = [
        f"instructions per request, in thousands (callgrind, {options.large} minus "
        f"{options.small} requests after {options.warmup} warm-up, {options.in_flight} in "
        f"flight, terminal {options.terminal}, log level {options.log_level}, no network; {build})",
        f"{'part':<24}" + "".join(f"{kind:>12}" for kind in kinds),
    ]
    # under 0.05 K: noise between the two runs, which can be a little negative
    shown = {
        kind: {part: value if abs(value) >= 50 else 0.0 for part, value in parts.items()}
        for kind, parts in results.items()
    }
    for part in PARTS:
        if any(shown[kind][part] for kind in kinds):
            lines.append(
                f"{part:<24}" + "".join(f"{shown[kind][part] / 1000:>12.1f}" for kind in kinds)
            )
    totals = {kind: sum(shown[kind].values()) for kind in kinds}
    lines.append(f"{'total':<24}" + "".join(f"{totals[kind] / 1000:>12.1f}" for kind in kinds))
    if "switch" in shown and "baseline" in shown and totals["switch"] > 0:
        switch, baseline = shown["switch"], totals["baseline"]
        native = sum(switch[part] for part in NATIVE_PARTS)
        lines.append(
            f"baseline/switch in instructions: {baseline / totals['switch']:.3f} (no network; "
            "honar bench measures the same ratio with it)"
        )
        text = (
            f"full/baseline >= 0.5 allows the switch {2 * baseline / 1000:.1f} K per purchase; "
            f"SQLite, OpenSSL and the JSON encoder take {native / 1000:.1f} K, the interpreter "
            f"{switch[INTERPRETER] / 1000:.1f} K"
        )
        if native > 0:
            text += f"; with no other work at all the ratio would be {baseline / native:.2f}"
        lines.append(text)
    return "\n".join(lines)


def build_label(modules: Sequence[str]) -> str:
    """What ran: the sources, or the compiled build and how many modules it holds."""
    return f"compiled build, {len(modules)} modules" if modules else "from the sources"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    defaults = Options()
    parser.add_argument(
        "--small", type=int, default=defaults.small, help="requests in the first run (500)"
    )
    parser.add_argument(
        "--large", type=int, default=defaults.large, help="requests in the second run (2500)"
    )
    parser.add_argument(
        "--warmup", type=int, default=defaults.warmup, help="requests before either (100)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=defaults.in_flight, help="concurrent requests (64)"
    )
    parser.add_argument("--terminal", default=defaults.terminal, help="demo terminal (HNR00004)")
    parser.add_argument(
        "--log-level", default=defaults.log_level, help="the switch's log level (default INFO)"
    )
    parser.add_argument("--only", choices=KINDS, help="one of the two (default both)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def main_with(args: argparse.Namespace) -> int:
    """Run and print."""
    from switch.compiled import compiled_modules

    options = Options(
        small=args.small,
        large=args.large,
        warmup=args.warmup,
        in_flight=args.in_flight,
        terminal=args.terminal,
        log_level=args.log_level,
    )
    kinds = (args.only,) if args.only else KINDS
    try:
        results = measure(options, kinds)
    except ToolMissing as error:
        print(f"honar instr-split: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a measured run failed: its last lines of stderr are in it
        print(f"honar instr-split: {error}", file=sys.stderr)
        return 1
    build = build_label(compiled_modules())
    if args.json:
        print(json.dumps({"build": build, "options": vars(options), "per_request": results}))
    else:
        print(report(results, options, build))
    return 0


def register(commands: Any) -> None:
    """Add ``honar instr-split``."""
    parser = commands.add_parser(
        "instr-split", help="instructions per purchase by library, under callgrind (valgrind)"
    )
    add_arguments(parser)
    parser.set_defaults(func=main_with)


def _child_main(argv: list[str]) -> int:
    kind, requests_file, warmup, in_flight, log_level = argv
    from switch.logs import setup_logging

    setup_logging("WARNING")
    child(kind, Path(requests_file), int(warmup), int(in_flight), log_level)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        raise SystemExit(_child_main(sys.argv[2:]))
    main_parser = argparse.ArgumentParser(prog="python -m scripts.instr_split")
    add_arguments(main_parser)
    raise SystemExit(main_with(main_parser.parse_args()))
