"""The published payShield transcripts, byte for byte, over TCP to the real ``honar hsm serve``.

`test_hsm_commands.py` checks the ThalesSim / reference transcripts and the ``thales_*``
vectors of ``published-vectors.json`` by calling `HostCommands.handle` in process. Here the same
requests go to the command-line server started as a subprocess, framed by hand on a raw socket
(2-byte big-endian length, 4-byte header, command code, fields); each answer must be exactly the
length, the echoed header, the response code, the error code and the fields expected.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from test_hsm_commands import TRANSCRIPTS, _request_of, _thales_vectors

from hsm_sim.hsm import Hsm
from hsm_sim.keys import Lmk

REPOSITORY = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 20.0
SOCKET_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LMK = Lmk.test()


@dataclass(frozen=True)
class Transcript:
    """One request (command code and fields) and the answer after the response code."""

    name: str
    code: str
    request: bytes
    expected: bytes


def _extra_transcripts() -> list[Transcript]:
    """The single transcripts `test_hsm_commands.py` checks outside its TRANSCRIPTS table."""
    tak = "U19D25F349FD03CC3556BB05F65283CA1"
    data = "72C29C2371CC9BDB65B779B8E8D37B29ECC154AA56A8799FAE2F498F76ED92F2"
    bdk = Hsm(lmk=LMK).import_clear_key("0123456789ABCDEFFEDCBA9876543210", "009")
    head = f"{bdk}605FFFF9876543210E00001"
    return [
        Transcript("NC", "NC", b"", b"00" + LMK.check_value().encode() + b"HONAR-SIM"),
        Transcript("M6-thalessim", "M6", f"01032003{tak}0040{data}".encode(), b"005F1448EE"),
        Transcript("M8-ok", "M8", f"01032003{tak}0040{data}5F1448EE".encode(), b"00"),
        Transcript("M8-mismatch", "M8", f"01032003{tak}0040{data}5F1448EF".encode(), b"01"),
        Transcript(
            "GW-x9.24", "GW", f"000{head}0011".encode() + b"4012345678909D987", b"009CCC7817"
        ),
        Transcript("BU-trailer", "BU", b"0200406FBB23A5214DF\x19TRAILER", b"000035BBE340A4B763"),
        Transcript("ZZ-unknown", "ZZ", b"", b"68"),
    ]


def _reference_transcripts() -> list[Transcript]:
    table = [
        Transcript(f"{code}-{number}", code, fields.encode("ascii"), expected.encode("ascii"))
        for number, (code, fields, expected) in enumerate(TRANSCRIPTS)
    ]
    return table + _extra_transcripts()


def _vector_transcripts() -> list[Transcript]:
    transcripts = []
    for vector in _thales_vectors():
        code, fields = _request_of(vector)
        expected = str(vector["expected"])
        transcripts.append(
            Transcript(str(vector["function"]), code, fields.encode(), expected.encode())
        )
    return transcripts


REFERENCE = _reference_transcripts()
VECTORS = _vector_transcripts()


def frame_request(header: bytes, code: str, fields: bytes) -> bytes:
    """A request framed by hand: 2-byte big-endian length, header, command code, fields."""
    payload = header + code.encode("ascii") + fields
    return len(payload).to_bytes(2, "big") + payload


def expected_answer(header: bytes, code: str, answer: bytes) -> bytes:
    """The whole framed answer: length, header, response code (2nd character + 1), answer."""
    raw = code.encode("ascii")
    payload = header + raw[:1] + bytes([raw[1] + 1]) + answer
    return len(payload).to_bytes(2, "big") + payload


def receive_frame(sock: socket.socket) -> bytes:
    """One framed answer, length prefix included."""
    prefix = receive_exactly(sock, 2)
    return prefix + receive_exactly(sock, int.from_bytes(prefix, "big"))


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes; fails if the server closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@dataclass
class ServedHsm:
    """The ``honar hsm serve`` subprocess and the port it listens on."""

    process: subprocess.Popen[str]
    port: int
    stdout: list[str]


@contextlib.contextmanager
def serve_hsm(directory: Path) -> Iterator[ServedHsm]:
    """Start ``python -m switch.cli hsm serve --port P``; stop it with SIGTERM, expecting 0."""
    port = free_port()
    stderr_path = directory / "stderr.log"
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    with stderr_path.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "switch.cli", "hsm", "serve", "--port", str(port)],
            cwd=REPOSITORY,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump_lines, args=(process.stdout, lines), daemon=True)
    pump.start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"no 'listening' line within {STARTUP_TIMEOUT_S} s: {seen}")
            if line is None:
                pytest.fail(
                    f"hsm serve exited with {process.wait()} before listening: "
                    f"{seen} {stderr_path.read_text(encoding='utf-8')}"
                )
            seen.append(line)
            if "listening" in line:
                assert f":{port} " in line, line
                break
        yield ServedHsm(process, port, seen)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                code: int | None = process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
            assert code == 0, (
                f"hsm serve exit code {code}: {stderr_path.read_text(encoding='utf-8')}"
            )
        pump.join(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def served_hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHsm]:
    """One ``honar hsm serve`` subprocess for the module's tests."""
    with serve_hsm(tmp_path_factory.mktemp("hsm-serve")) as served:
        yield served


@contextlib.contextmanager
def connect(served: ServedHsm) -> Iterator[socket.socket]:
    """A raw TCP connection to the served HSM."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=SOCKET_TIMEOUT_S)
    try:
        yield sock
    finally:
        sock.close()


def exchange(served: ServedHsm, header: bytes, transcript: Transcript) -> bytes:
    """Send one request on a new connection and return its framed answer."""
    with connect(served) as sock:
        sock.sendall(frame_request(header, transcript.code, transcript.request))
        return receive_frame(sock)


def _ids(transcript: Any) -> str:
    return str(transcript.name)


def test_reference_transcripts_cover_the_commands_of_the_brief() -> None:
    codes = {t.code for t in REFERENCE}
    assert codes >= {"FA", "CA", "CI", "DC", "CW", "BU", "NC", "M6"}
    dc = {t.request[-4:] for t in REFERENCE if t.code == "DC"}
    assert {b"4402", b"4401"} <= dc


@pytest.mark.parametrize("transcript", REFERENCE, ids=_ids)
def test_reference_transcript_over_tcp(served_hsm: ServedHsm, transcript: Transcript) -> None:
    header = b"R" + f"{REFERENCE.index(transcript):03d}".encode()
    answer = exchange(served_hsm, header, transcript)
    assert answer == expected_answer(header, transcript.code, transcript.expected)


def test_published_thales_vectors_are_found() -> None:
    if not VECTORS:
        if os.environ.get("CI") == "true":
            pytest.fail("published-vectors.json is missing")
        pytest.skip("published-vectors.json is not available")
    assert {t.code for t in VECTORS} >= {"CA", "DC", "CW", "BU"}


@pytest.mark.parametrize("transcript", VECTORS, ids=_ids)
def test_published_thales_vector_over_tcp(served_hsm: ServedHsm, transcript: Transcript) -> None:
    header = b"V" + f"{VECTORS.index(transcript):03d}".encode()
    answer = exchange(served_hsm, header, transcript)
    assert answer == expected_answer(header, transcript.code, transcript.expected)


def test_all_transcripts_pipelined_on_one_connection(served_hsm: ServedHsm) -> None:
    """Every request in one write; the answers come back in order, each byte-identical."""
    transcripts = REFERENCE + VECTORS
    headers = [f"{number:04d}".encode() for number in range(len(transcripts))]
    stream = b"".join(
        frame_request(header, t.code, t.request)
        for header, t in zip(headers, transcripts, strict=True)
    )
    with connect(served_hsm) as sock:
        sock.sendall(stream)
        for header, transcript in zip(headers, transcripts, strict=True):
            answer = receive_frame(sock)
            assert answer == expected_answer(header, transcript.code, transcript.expected), (
                transcript.name
            )


def test_split_request_and_binary_header_are_answered(served_hsm: ServedHsm) -> None:
    """A request arriving a byte at a time, with a non-ASCII header, is answered the same."""
    transcript = REFERENCE[0]
    header = b"\x00\xff\x10\x80"
    request = frame_request(header, transcript.code, transcript.request)
    with connect(served_hsm) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(len(request)):
            sock.sendall(request[index : index + 1])
        assert receive_frame(sock) == expected_answer(header, transcript.code, transcript.expected)


def test_server_printed_its_listening_line(served_hsm: ServedHsm) -> None:
    assert any(f"127.0.0.1:{served_hsm.port}" in line for line in served_hsm.stdout)
    assert served_hsm.process.poll() is None


def test_sigterm_stops_the_server_with_exit_code_0(tmp_path: Path) -> None:
    with serve_hsm(tmp_path) as served:
        nc = next(t for t in REFERENCE if t.code == "NC")
        assert exchange(served, b"STOP", nc) == expected_answer(b"STOP", "NC", nc.expected)
        with connect(served):  # an open idle connection does not hold the shutdown up
            served.process.send_signal(signal.SIGTERM)
            assert served.process.wait(timeout=STOP_TIMEOUT_S) == 0
