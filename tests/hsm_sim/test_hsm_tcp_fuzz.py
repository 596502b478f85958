"""Random byte streams at the HSM's TCP face: every request answered with an error code, or closed.

An `HsmServer` on port 0 runs in a background thread with its own event loop. Hypothesis builds
streams of frames (random lengths, headers, command codes and bodies; length prefixes that
overrun the data, fall short of a header and command, or pass the frame limit; raw garbage),
sends each on a fresh connection, half-closes it and reads until the server closes.

A reference parse of the same stream (`hsm_sim.protocol` is not used for it) says which frames
are complete: each of those must be answered in order with a well-formed response (header
echoed, response code = command code with its second character advanced by one, 2-digit error
code); a stream that cannot be framed ends with the connection closed. Afterwards the server
still answers ``NC`` and a published ``CA`` transcript exactly.

The number of examples scales with ``HONAR_FUZZ_EXAMPLES`` (the default keeps the module well
under 20 s).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm_sim.commands import COMMANDS, HostCommands
from hsm_sim.keys import Lmk
from hsm_sim.server import HsmServer, ServerLimits

LMK = Lmk.test()
HEADER_LENGTH = 4
FRAME_SIZE_MAX = 4096
EXAMPLES_DEFAULT = 500
SOCKET_TIMEOUT_S = 10.0
# A time box for the property when HONAR_FUZZ_EXAMPLES is unset; HONAR_FUZZ_BUDGET_S sets it
# (0: none).
BUDGET_S_DEFAULT = 12.0

TPK = "U8463435FC4B4DAA0C49025272C29B12C"
ZPK = "U1EF828AA8F6B80EB83E19FBC373F3A85"
CA_REQUEST = f"{TPK}{ZPK}126428EB94035AF53B0101550000025321".encode()
CA_ANSWER = b"000491DDDA0A7C12CFAA01"
SEED_BODIES = [
    CA_REQUEST,
    b"0200406FBB23A5214DF",
    b"U9B4934384B19946B040CD702B4D581454123456789012345;8701101",
    b"00131003U19D25F349FD03CC3556BB05F65283CA10004ABCD",
]


def fuzz_examples(default: int = EXAMPLES_DEFAULT) -> int:
    """Examples for the property: $HONAR_FUZZ_EXAMPLES when set, else ``default``."""
    scaled = os.environ.get("HONAR_FUZZ_EXAMPLES")
    if not scaled:
        return default
    return max(int(scaled), 1)


def fuzz_budget_s() -> float:
    """Seconds the property may run: $HONAR_FUZZ_BUDGET_S, else a default unless scaled up."""
    explicit = os.environ.get("HONAR_FUZZ_BUDGET_S")
    if explicit:
        return float(explicit)
    return 0.0 if os.environ.get("HONAR_FUZZ_EXAMPLES") else BUDGET_S_DEFAULT


@dataclass
class BackgroundServer:
    """An `HsmServer` served by an event loop in a daemon thread."""

    server: HsmServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port chosen by the system."""
        return self.server.port

    def connection_count(self) -> int:
        """Connections the server is serving now (read on its own loop)."""

        async def count() -> int:
            return self.server.connection_count

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(SOCKET_TIMEOUT_S)


@pytest.fixture(scope="module")
def background_server() -> Iterator[BackgroundServer]:
    """Start an `HsmServer` on port 0 in a thread; stop it after the module."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hsm-fuzz-server", daemon=True)
    thread.start()
    limits = ServerLimits(frame_size_max=FRAME_SIZE_MAX, connections_max=64, idle_timeout_s=30)
    server = HsmServer(HostCommands(LMK), port=0, header_length=HEADER_LENGTH, limits=limits)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(SOCKET_TIMEOUT_S)
    try:
        yield BackgroundServer(server, loop, thread)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(SOCKET_TIMEOUT_S * 2)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SOCKET_TIMEOUT_S)
        loop.close()


# --- the stream model ----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A complete frame of the stream: its header, 2-byte command code and fields."""

    header: bytes
    command: bytes
    body: bytes


@dataclass(frozen=True)
class StreamModel:
    """What a correct server does with a stream: answer ``requests``, then maybe refuse."""

    requests: list[Request]
    unframeable: bool


def model_of(stream: bytes) -> StreamModel:
    """Split ``stream`` as the protocol says, independently of `hsm_sim.protocol`."""
    requests: list[Request] = []
    position = 0
    minimum = HEADER_LENGTH + 2
    while len(stream) - position >= 2:
        length = int.from_bytes(stream[position : position + 2], "big")
        if length > FRAME_SIZE_MAX or length < minimum:
            return StreamModel(requests, unframeable=True)
        end = position + 2 + length
        if end > len(stream):
            break  # truncated: waits for bytes that never come, then sees the end
        frame = stream[position + 2 : end]
        requests.append(
            Request(frame[:HEADER_LENGTH], frame[HEADER_LENGTH:minimum], frame[minimum:])
        )
        position = end
    return StreamModel(requests, unframeable=False)


def expected_response_code(command: bytes) -> bytes:
    """The command code with its second character advanced by one."""
    return command[:1] + bytes([(command[1] + 1) % 256])


def split_answers(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole length-prefixed answers in ``data``, and any bytes left over."""
    frames: list[bytes] = []
    position = 0
    while len(data) - position >= 2:
        length = int.from_bytes(data[position : position + 2], "big")
        if position + 2 + length > len(data):
            break
        frames.append(data[position + 2 : position + 2 + length])
        position += 2 + length
    return frames, data[position:]


# --- talking to the server -----------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """The bytes the server sent before closing, and whether it reset the connection."""

    data: bytes
    reset: bool


def send_stream(port: int, stream: bytes) -> Exchange:
    """Send ``stream``, half-close, read until the server closes (or resets) the connection."""
    received = bytearray()
    reset = False
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            reset = True  # the server closed on a bad prefix while we were still sending
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            reset = True
    return Exchange(bytes(received), reset)


def check_answers(stream: bytes, exchange: Exchange) -> None:
    """The server's bytes are well-formed answers to the model's requests, in order."""
    model = model_of(stream)
    answers, rest = split_answers(exchange.data)
    assert rest == b"", f"a partial answer: {rest!r}"
    if model.unframeable or exchange.reset:
        # Closing on a bad prefix may reset the connection before every answer arrives.
        assert len(answers) <= len(model.requests)
    else:
        assert len(answers) == len(model.requests)
    if exchange.reset:
        assert model.unframeable, "reset although every frame was well-formed"
    for request, answer in zip(model.requests, answers, strict=False):
        assert len(answer) >= HEADER_LENGTH + 4, answer
        assert answer[:HEADER_LENGTH] == request.header
        code_end = HEADER_LENGTH + 2
        assert answer[HEADER_LENGTH:code_end] == expected_response_code(request.command)
        error = answer[code_end : code_end + 2]
        assert error.isascii() and error.isdigit(), error
        if (request.command, request.body) == (b"NC", b""):
            assert answer[code_end:] == b"00" + LMK.check_value().encode() + b"HONAR-SIM"
        elif request.command.decode("latin-1") not in COMMANDS:
            assert (error, answer[code_end + 2 :]) == (b"68", b"")


def framed(header: bytes, command: bytes, body: bytes) -> bytes:
    """A well-framed request (any bytes for header, command and body)."""
    payload = header + command + body
    return len(payload).to_bytes(2, "big") + payload


# --- strategies ----------------------------------------------------------------------------

headers = st.binary(min_size=HEADER_LENGTH, max_size=HEADER_LENGTH)
commands = st.one_of(
    st.sampled_from(sorted(code.encode("ascii") for code in COMMANDS)),
    st.binary(min_size=2, max_size=2),
    st.sampled_from([b"ZZ", b"\xff\xff", b"N\xff", b"  "]),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(SEED_BODIES),
    st.builds(
        lambda seed, cut, extra: seed[:cut] + extra,
        st.sampled_from(SEED_BODIES),
        st.integers(0, 80),
        st.binary(max_size=20),
    ),
    st.text(alphabet="0123456789ABCDEFUXT;%\x19", max_size=120).map(str.encode),
)
good_frames = st.builds(framed, headers, commands, bodies)
truncated_frames = st.builds(
    lambda frame, cut: frame[: max(cut, 0)], good_frames, st.integers(0, 60)
)
bad_length_frames = st.builds(
    lambda length, rest: length.to_bytes(2, "big") + rest,
    st.one_of(
        st.integers(0, HEADER_LENGTH + 1),
        st.integers(FRAME_SIZE_MAX + 1, 0xFFFF),
    ),
    st.binary(max_size=64),
)
lying_length_frames = st.builds(
    lambda length, rest: length.to_bytes(2, "big") + rest,
    st.integers(0, 0xFFFF),
    st.binary(max_size=200),
)
streams = st.one_of(
    st.lists(good_frames, min_size=1, max_size=6).map(b"".join),
    st.builds(
        lambda frames, tail: b"".join(frames) + tail,
        st.lists(good_frames, max_size=4),
        st.one_of(truncated_frames, bad_length_frames, lying_length_frames),
    ),
    st.lists(
        st.one_of(good_frames, truncated_frames, bad_length_frames, lying_length_frames),
        min_size=1,
        max_size=5,
    ).map(b"".join),
    st.binary(min_size=1, max_size=600),
    st.builds(lambda frame: frame + b"\x00" * 40_000, good_frames),
)


def test_random_streams_get_error_answers_or_a_closed_connection(
    background_server: BackgroundServer,
) -> None:
    """Random frames: answered in order with error codes, or closed; the server lives on."""
    budget = fuzz_budget_s()
    started = time.monotonic()
    sent = 0

    @settings(
        max_examples=fuzz_examples(),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(stream=streams)
    def property_(stream: bytes) -> None:
        nonlocal sent
        if budget and time.monotonic() - started > budget:
            return  # the time box is spent: the remaining examples pass unsent
        sent += 1
        check_answers(stream, send_stream(background_server.port, stream))

    property_()
    assert sent > 0
    assert_still_answers(background_server)


def assert_still_answers(background: BackgroundServer) -> None:
    """A valid NC and the published CA transcript, answered exactly; connections all closed."""
    nc = framed(b"LAST", b"NC", b"") + framed(b"CA01", b"CA", CA_REQUEST)
    exchange = send_stream(background.port, nc)
    assert not exchange.reset
    nc_payload = b"LASTND00" + LMK.check_value().encode() + b"HONAR-SIM"
    ca_payload = b"CA01CB" + CA_ANSWER
    assert exchange.data == (
        len(nc_payload).to_bytes(2, "big")
        + nc_payload
        + len(ca_payload).to_bytes(2, "big")
        + ca_payload
    )
    deadline = time.monotonic() + SOCKET_TIMEOUT_S
    while background.connection_count() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert background.connection_count() == 0


@pytest.mark.parametrize(
    "stream",
    [
        b"\x00",  # half a length prefix, then the end
        b"\x00\x00",  # length 0: cannot hold header and command
        b"\x00\x05HEADN",  # length 5: one byte short of a command code
        b"\xff\xff" + b"A" * 100,  # past the frame limit
        (FRAME_SIZE_MAX + 1).to_bytes(2, "big") + b"HEADNC",
        framed(b"HEAD", b"NC", b"")[:-1],  # truncated by one byte
        framed(b"HEAD", b"NC", b"") + b"\x00\x01X",  # a good frame, then a bad one
        framed(b"\xff\x00\x00\xff", b"\xfe\xff", b"\x00" * 50),  # binary header and command
        framed(b"HEAD", b"CA", CA_REQUEST[:-3]),
        framed(b"HEAD", b"BU", b"0200406FBB23A5214DF") * 30,  # pipelined
        b"\x00\x06HEADNC" + b"\xff\xff",  # a good frame, then an oversized prefix
    ],
)
def test_edge_streams(background_server: BackgroundServer, stream: bytes) -> None:
    """Hand-picked edges of the framing, checked against the same model."""
    check_answers(stream, send_stream(background_server.port, stream))
    model = model_of(stream)
    if model.requests and not model.unframeable:
        assert split_answers(send_stream(background_server.port, stream).data)[0]


def test_server_survives_the_edges(background_server: BackgroundServer) -> None:
    """After all of the above the server still answers correctly."""
    assert_still_answers(background_server)
