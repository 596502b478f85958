"""``honar instr-split``: the callgrind reader, the split by library, the requests files, the
options, and one real callgrind run of a small Python program."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import instr_split
from scripts.instr_split import (
    C_LIBRARY,
    COMPILED,
    INTERPRETER,
    JSON_ENCODER,
    NATIVE_PARTS,
    OPENSSL,
    OTHER,
    PARTS,
    SQLITE,
    UNKNOWN,
    CallgrindFormatError,
    Options,
    build_label,
    check_options,
    object_costs,
    part_of,
    per_request,
    read_requests,
    report,
    split,
    write_requests,
)
from switch.cli import main
from tests.conftest import service_missing

# A callgrind file in the shape valgrind writes: two position columns, name compression, an id
# first named by cob=, a call's inclusive cost that is not the caller's, subposition
# compression, a jump line.
CALLGRIND = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
positions: instr line
events: Ir
summary: 1175

ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) ceval.c
fn=(1) _PyEval_EvalFrameDefault
0x10 10 100
+4 +1 200
cob=(2) /usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6
cfi=(2) sqlite3.c
cfn=(2) sqlite3VdbeExec
calls=3 0x50 20
* * 9999
jump=2 0x20 12
* *
+1 * 5

ob=(2)
fl=(2)
fn=(2)
0x50 20 300
-8 -1 70

ob=(3) /work/honar/switch/_native__mypyc.cpython-311-x86_64-linux-gnu.so
fl=(3) ???
fn=(3) CPyDef_handle
0x90 0 500
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callgrind.out"
    path.write_text(text)
    return path


def test_object_costs_counts_self_cost_per_object(tmp_path: Path) -> None:
    costs = object_costs(write(tmp_path, CALLGRIND))
    assert costs == {
        "/usr/lib/libpython3.11.so.1.0": 100 + 200 + 5,  # not the call's 9,999
        "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6": 300 + 70,
        "/work/honar/switch/_native__mypyc.cpython-311-x86_64-linux-gnu.so": 500,
    }


def test_one_position_column(tmp_path: Path) -> None:
    text = "positions: line\nevents: Ir Dr\nsummary: 7 3\nob=(1) /lib/libc.so.6\n5 4 1\n+2 3 2\n"
    assert object_costs(write(tmp_path, text)) == {"/lib/libc.so.6": 7}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CALLGRIND.replace("summary: 1175", "summary: 1176"), "add up to 1175, the file says 1176"),
        (CALLGRIND.replace("summary: 1175\n", ""), "no summary: or totals: line"),
        (CALLGRIND.replace("cob=(2) /usr", "cob=(9) /usr"), ":22: object id (2) used before"),
        (CALLGRIND.replace("+4 +1 200", "+4 +1 x200"), ":12: a cost line without a number"),
    ],
)
def test_object_costs_errors_say_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CallgrindFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        object_costs(write(tmp_path, text))


@pytest.mark.parametrize(
    ("obj", "part"),
    [
        ("/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0", INTERPRETER),
        ("/root/.pyenv/versions/3.11.7/bin/python3.11", INTERPRETER),
        ("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6", SQLITE),
        ("/x/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so", SQLITE),
        ("/x/site-packages/cryptography/hazmat/bindings/_rust.abi3.so", OPENSSL),
        ("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", OPENSSL),
        ("/x/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so", JSON_ENCODER),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", C_LIBRARY),
        ("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", C_LIBRARY),
        ("/x/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so", OTHER),
        ("???", UNKNOWN),
    ],
)
def test_part_of(obj: str, part: str) -> None:
    assert part_of(obj, Path("/work/honar")) == part


def test_part_of_the_projects_own_objects(tmp_path: Path) -> None:
    built = tmp_path / "switch" / "codec.cpython-311-x86_64-linux-gnu.so"
    in_venv = tmp_path / ".venv" / "lib" / "x.cpython-311-x86_64-linux-gnu.so"
    assert part_of(str(built), tmp_path) == COMPILED
    assert part_of(str(in_venv), tmp_path) == OTHER  # a package's, not ours
    assert part_of(str(built), tmp_path / "elsewhere") == OTHER


def test_split_and_per_request() -> None:
    small = split({"/lib/libpython3.11.so": 1_000, "/lib/libsqlite3.so.0": 10, "???": 1})
    large = split({"/lib/libpython3.11.so": 5_000, "/lib/libsqlite3.so.0": 90, "???": 1})
    assert set(small) == set(PARTS)
    per = per_request(small, large, 40)
    assert per[INTERPRETER] == 100.0
    assert per[SQLITE] == 2.0
    assert per[UNKNOWN] == 0.0


def test_report_states_the_ratio_and_the_floor() -> None:
    switch = dict.fromkeys(PARTS, 0.0) | {
        INTERPRETER: 1_200_000.0,
        SQLITE: 100_000.0,
        OPENSSL: 200_000.0,
        JSON_ENCODER: 30_000.0,
        C_LIBRARY: 70_000.0,
    }
    baseline = dict.fromkeys(PARTS, 0.0) | {INTERPRETER: 150_000.0, C_LIBRARY: 10_000.0}
    text = report({"switch": switch, "baseline": baseline}, Options(), "from the sources")
    total = sum(switch.values())
    assert f"{total / 1000:.1f}" in text.splitlines()[-3]  # the total row
    assert f"baseline/switch in instructions: {160_000 / total:.3f}" in text
    native = sum(switch[part] for part in NATIVE_PARTS)
    assert f"allows the switch {2 * 160_000 / 1000:.1f} K" in text
    assert f"JSON encoder take {native / 1000:.1f} K" in text
    assert f"with no other work at all the ratio would be {160_000 / native:.2f}" in text
    assert "compiled modules" not in text  # parts that are 0 everywhere are left out


def test_report_shows_noise_as_zero_and_names_the_build() -> None:
    switch = dict.fromkeys(PARTS, 0.0) | {INTERPRETER: 1_000_000.0, OPENSSL: -20.0}
    baseline = dict.fromkeys(PARTS, 0.0) | {INTERPRETER: 100_000.0, OPENSSL: -0.4}
    text = report({"switch": switch, "baseline": baseline}, Options(), build_label(("a", "b")))
    rows = [line.split()[0] for line in text.splitlines()[2:-2]]
    assert rows == ["interpreter", "total"]  # OpenSSL's -0.02 K and -0.0004 K are noise
    assert "-0.0" not in text
    assert text.splitlines()[0].endswith("no network; compiled build, 2 modules)")
    assert build_label(()) == "from the sources"


def test_requests_files_round_trip_and_a_cut_off_file(tmp_path: Path) -> None:
    path = tmp_path / "r.bin"
    payloads = [b"0200abc", b"", b"x" * 300]
    write_requests(path, payloads)
    assert read_requests(path) == payloads
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(ValueError, match=r"request 3 at byte 15 says 300 bytes, 299 are left"):
        read_requests(path)
    path.write_bytes(data[:13])
    with pytest.raises(ValueError, match=r"a length header cut off at byte 11"):
        read_requests(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"small": 0}, "--small must be 1-19999, got 0"),
        ({"large": 20_001}, "--large must be 2-20000, got 20001"),
        ({"warmup": -1}, "--warmup must be 0-20000, got -1"),
        ({"in_flight": 0}, "--in-flight must be 1-4096, got 0"),
        ({"small": 500, "large": 500}, "--large must be more than --small, got 500 and 500"),
    ],
)
def test_options_out_of_bounds(changes: dict[str, int], message: str) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match=message):
        check_options(replace(Options(), **changes))


def test_options_are_checked_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["instr-split", "--small", "9", "--large", "3"]) == 2
    assert "--large must be more than --small, got 3 and 9" in capsys.readouterr().err


def test_without_valgrind_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(instr_split.shutil, "which", lambda _name: None)
    assert main(["instr-split"]) == 2
    assert "valgrind is not installed (apt-get install -y valgrind)" in capsys.readouterr().err


def test_the_measured_work_runs_outside_valgrind(tmp_path: Path) -> None:
    """What the children run under callgrind, run directly on a few requests of each kind."""
    from scripts.load import build_requests, default_stan_start

    path = tmp_path / "r.bin"
    write_requests(path, build_requests(5, terminal_id="HNR00004", stan_start=default_stan_start()))
    for kind in ("switch", "baseline"):
        assert instr_split.child(kind, path, 2, 2, "WARNING") == 3
    with pytest.raises(ValueError, match="kind must be one of switch, baseline, got 'x'"):
        instr_split.child("x", path, 2, 2, "WARNING")


def test_a_real_callgrind_file(tmp_path: Path) -> None:
    """The reader against valgrind's own output: the sum matches its summary, and a program
    that mostly encodes JSON shows the interpreter and the JSON encoder."""
    if shutil.which("valgrind") is None:
        service_missing("valgrind (apt-get install -y valgrind)")
    out = tmp_path / "callgrind.out"
    program = "import json\nfor i in range(20000): json.dumps({'a': [i] * 20})\n"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    subprocess.run(
        [*command, sys.executable, "-S", "-c", program],
        check=True,
        capture_output=True,
        timeout=300,
    )
    parts = split(object_costs(out))
    assert parts[JSON_ENCODER] > 1_000_000
    assert parts[INTERPRETER] > parts[JSON_ENCODER] / 10
    assert parts[UNKNOWN] < sum(parts.values()) / 100


def test_a_failed_measured_run_is_reported_with_its_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A child that fails under valgrind: exit 1 and the end of its stderr, no traceback."""

    def failing_run(*_args: object, **_kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "Traceback ...\nValueError: bad request")

    monkeypatch.setattr(instr_split.shutil, "which", lambda _name: "/usr/bin/valgrind")
    monkeypatch.setattr(instr_split.subprocess, "run", failing_run)
    assert main(["instr-split", "--small", "1", "--large", "2", "--warmup", "0"]) == 1
    err = capsys.readouterr().err
    assert "the switch run under callgrind failed (1):" in err
    assert err.rstrip().endswith("ValueError: bad request")
