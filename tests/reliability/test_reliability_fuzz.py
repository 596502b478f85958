"""Bounded fuzzing (hypothesis) of everything that reads bytes from outside.

Each parser gets random input and mutated valid input, and must either accept it or reject it
with its own error type carrying a place (field, line, error code); no other exception, no hang.
``HONAR_FUZZ_EXAMPLES=20000 pytest tests/reliability/test_reliability_fuzz.py`` runs a long
campaign; the default budget keeps this module to a few seconds in CI.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_support import (
    M0002,
    exchange_raw,
    fuzz_settings,
    mutated,
    seed_messages,
)

from hsm_sim.client import TcpHsmPort
from hsm_sim.commands import COMMANDS, HostCommands
from hsm_sim.hsm import Hsm, MacDirection
from hsm_sim.keys import Lmk
from hsm_sim.protocol import (
    FramingError as HostFramingError,
)
from hsm_sim.protocol import (
    HostMessageParser,
    HostResponse,
    build_response,
    parse_response,
)
from hsm_sim.server import HsmServer
from ledger import demo
from ledger.disburse import DisbursementError, disburse_file, parse_rows
from ledger.store import Store
from scripts.pos import PosTerminal
from switch.codec import CodecError, Message, decode, encode
from switch.dialects import get_dialect
from switch.dialects.base import Framing
from switch.framing import Framer, FramingError, frame
from switch.requests import RequestError, parse_request
from switch.trace import TraceError, iter_trace, parse_line

from conftest import RunningSwitch, make_config, running_switch

DIALECTS = ("shetab87", "shetab93")
SEEDS = {name: seed_messages(name) for name in DIALECTS}


# --- codec (both dialects) and request parsing --------------------------------------------------


def decode_or_reject(payload: bytes, dialect_name: str) -> Message | None:
    """What the service does first: decode, translate, parse. Only the documented errors."""
    dialect = get_dialect(dialect_name)
    try:
        wire = decode(payload, dialect)
    except CodecError as error:
        assert error.field is not None or error.pos is not None or error.reason, error
        assert all(isinstance(v, str) for v in error.partial.values())
        return None
    # A decoded message re-encodes to something that decodes to the same message.
    again = decode(encode(wire, dialect), dialect)
    assert again == wire
    try:
        canonical = dialect.to_canonical(wire)
    except ValueError:
        return None  # the service answers these as undecodable (30) or drops them
    if dialect.response_mti.get(wire.mti) is not None and canonical.has(11) and canonical.has(41):
        try:
            parse_request(canonical)
        except RequestError as error:
            assert len(error.response_code) == 2 and error.response_code.isdigit()
    return wire


@pytest.mark.parametrize("dialect_name", DIALECTS)
@fuzz_settings(300)
@given(data=st.data())
def test_codec_random_bytes_decode_or_codec_error(dialect_name: str, data: st.DataObject) -> None:
    prefix = data.draw(st.sampled_from([b"", b"0200", b"0800", b"1200", b"0400", b"1804"]))
    payload = prefix + data.draw(st.binary(max_size=300))
    decode_or_reject(payload, dialect_name)


@pytest.mark.parametrize("dialect_name", DIALECTS)
@fuzz_settings(400)
@given(data=st.data())
def test_codec_mutated_valid_messages_decode_or_codec_error(
    dialect_name: str, data: st.DataObject
) -> None:
    payload = data.draw(mutated(SEEDS[dialect_name]))
    decode_or_reject(payload, dialect_name)


@pytest.mark.parametrize("dialect_name", DIALECTS)
def test_codec_seed_messages_are_valid(dialect_name: str) -> None:
    """The fuzz seeds themselves decode and parse (else the mutations test little)."""
    for payload in SEEDS[dialect_name]:
        assert decode_or_reject(payload, dialect_name) is not None


# --- framer ------------------------------------------------------------------------------------


def drain(framer: Framer) -> tuple[list[bytes], bool]:
    frames: list[bytes] = []
    while True:
        try:
            payload = framer.next_frame()
        except FramingError:
            return frames, True
        if payload is None:
            return frames, False
        frames.append(payload)


@pytest.mark.parametrize("framing", list(Framing))
@fuzz_settings(300)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20), size_max=st.integers(1, 300))
def test_framer_random_stream(framing: Framing, chunks: list[bytes], size_max: int) -> None:
    framer = Framer(framing, frame_size_max=size_max)
    for chunk in chunks:
        framer.receive_data(chunk)
        frames, failed = drain(framer)
        assert all(0 < len(f) <= size_max for f in frames)
        if failed:
            break  # the server closes the connection here


@pytest.mark.parametrize("framing", list(Framing))
@fuzz_settings(200)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_framer_any_split_of_valid_frames_gives_them_back(
    framing: Framing, payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(p, framing) for p in payloads)
    framer = Framer(framing, frame_size_max=200)
    received: list[bytes] = []
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        framer.receive_data(stream[start:end])
        frames, failed = drain(framer)
        assert not failed
        received += frames
    assert received == payloads
    assert framer.buffered_size == 0


# --- HSM host commands and their framing ------------------------------------------------------


class _RecordingClient(TcpHsmPort):
    """A TcpHsmPort that answers from an in-process command table and records each request."""

    def __init__(self, commands: HostCommands) -> None:
        super().__init__("127.0.0.1", 1)
        self.commands = commands
        self.recorded: list[tuple[str, bytes]] = []

    async def call(self, command: str, fields: bytes) -> HostResponse:
        self.recorded.append((command, fields))
        result = self.commands.handle(command, fields)
        return HostResponse(b"", command, result.error_code, result.fields)


def hsm_seed_requests() -> list[tuple[str, bytes]]:
    """Valid host commands as the switch sends them (MAC, PIN, DUKPT, key generation)."""
    lmk = Lmk.test()
    hsm = Hsm(lmk=lmk)
    client = _RecordingClient(HostCommands(lmk))
    terminal = next(t for t in demo.TERMINALS if t.id == "HNR00004")
    tak = hsm.import_clear_key(terminal.tak, "003")
    tpk = hsm.import_clear_key(terminal.tpk, "002")
    tmk = hsm.import_clear_key(terminal.tmk, "002")
    pvk = hsm.import_clear_key(demo.PVK_CLEAR, "002")
    bdk = hsm.import_clear_key(demo.BDK_CLEAR, "009")
    pos = PosTerminal.demo("HNR00004")
    pin_block = bytes.fromhex(
        decode(pos.purchase(pan=M0002[0], pin=M0002[1], amount=1), pos.dialect).fields[52]
    )
    pvv = hsm.generate_pvv(pvk, M0002[0], M0002[1], 1)
    ksn = bytes.fromhex("FFFF9876543210E00001")

    async def run() -> None:
        mac = await client.generate_mac(tak, b"0200 some message bytes")
        await client.verify_mac(tak, b"0200 some message bytes", mac)
        await client.verify_pin_pvv(tpk, pvk, pin_block, M0002[0], 1, pvv)
        await client.generate_working_key(tmk, "002")
        dukpt_mac = await client.generate_mac_dukpt(bdk, ksn, b"data", MacDirection.RESPONSE)
        await client.verify_mac_dukpt(bdk, ksn, b"data", dukpt_mac, MacDirection.REQUEST)
        await client.verify_pin_pvv_dukpt(bdk, ksn, pvk, pin_block, M0002[0], 1, pvv)

    asyncio.run(run())
    return [*client.recorded, ("NC", b""), ("BU", b"0200406FBB23A5214DF")]


HSM_COMMANDS = HostCommands(Lmk.test())
HSM_SEEDS = hsm_seed_requests()
HSM_SERVER = HsmServer(HSM_COMMANDS, port=0)


def check_answer(command: str, body: bytes) -> None:
    result = HSM_COMMANDS.handle(command, body)  # must not raise: no 41 hiding a crash
    assert len(result.error_code) == 2 and result.error_code.isdigit()
    assert isinstance(result.fields, bytes)
    framed = build_response(b"0001", command.encode("ascii", "replace")[:2], result.error_code, b"")
    assert framed[2:6] == b"0001"


def test_hsm_seed_requests_are_accepted() -> None:
    """The recorded requests are valid (else the mutations test only the field reader)."""
    for command, body in HSM_SEEDS:
        result = HSM_COMMANDS.handle(command, body)
        # CM gets a TPK-encrypted block here, not one under the DUKPT key: 20 (PIN block error).
        assert result.error_code in ("00", "01", "20"), (command, body, result)


@fuzz_settings(600)
@given(command=st.sampled_from(sorted(COMMANDS)), body=st.binary(max_size=200))
def test_hsm_commands_random_bodies(command: str, body: bytes) -> None:
    check_answer(command, body)


@fuzz_settings(600)
@given(data=st.data())
def test_hsm_commands_mutated_valid_bodies(data: st.DataObject) -> None:
    command, body = data.draw(st.sampled_from(HSM_SEEDS))
    seeds = [b for c, b in HSM_SEEDS if c == command]
    check_answer(command, data.draw(mutated(seeds)) if body else data.draw(st.binary(max_size=8)))


@fuzz_settings(200)
@given(command=st.text(max_size=3), body=st.binary(max_size=50))
def test_hsm_commands_unknown_codes_are_68(command: str, body: bytes) -> None:
    if command not in COMMANDS:
        assert HSM_COMMANDS.handle(command, body).error_code == "68"


@fuzz_settings(300)
@given(
    header_length=st.integers(0, 8),
    chunks=st.lists(st.binary(max_size=80), max_size=12),
)
def test_hsm_host_message_parser_random_stream(header_length: int, chunks: list[bytes]) -> None:
    parser = HostMessageParser(header_length, frame_size_max=512)
    for chunk in chunks:
        parser.receive_data(chunk)
        try:
            while (message := parser.next_message()) is not None:
                assert len(message.header) == header_length
                assert len(message.command_bytes) == 2
                answer = HSM_SERVER.answer(message)  # what the TCP server writes back
                assert int.from_bytes(answer[:2], "big") == len(answer) - 2
        except HostFramingError:
            return


@fuzz_settings(300)
@given(frame_bytes=st.binary(max_size=60), header_length=st.integers(0, 8))
def test_hsm_parse_response_random(frame_bytes: bytes, header_length: int) -> None:
    try:
        response = parse_response(frame_bytes, header_length)
    except HostFramingError:
        assert len(frame_bytes) < header_length + 4
        return
    assert response.header == frame_bytes[:header_length]


# --- trace reader -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
trace_entries = st.fixed_dictionaries(
    {},
    optional={
        "t": json_values,
        "conn": json_values | st.just("c1"),
        "dir": st.sampled_from(["in", "out", "IN", ""]) | json_values,
        "hex": st.sampled_from(["30323030", "", "ABC", "zz"])
        | st.binary(max_size=20).map(bytes.hex)
        | json_values,
        "note": json_values,
    },
)


@st.composite
def trace_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["json", "garbage", "comment", "blank"]))
    if kind == "json":
        import json

        return json.dumps(draw(trace_entries))
    if kind == "garbage":
        return draw(st.text(max_size=40).map(lambda s: s.replace("\n", " ").replace("\r", " ")))
    if kind == "comment":
        return "# " + draw(st.text(alphabet="abc xyz", max_size=10))
    return ""


@fuzz_settings(400)
@given(lines=st.lists(trace_lines(), max_size=12))
def test_trace_reader_parses_or_names_the_line(lines: list[str]) -> None:
    for number, text in enumerate(lines, start=1):
        try:
            record = parse_line(text, number, "t.jsonl")
        except TraceError as error:
            assert error.line == number and str(error).startswith(f"t.jsonl:{number}: ")
            continue
        if record is not None:
            assert record.direction in ("in", "out") and record.payload
            assert parse_line(record.to_json(), number) == record


@fuzz_settings(200)
@given(content=st.text(st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_trace_file_random_text_parse_or_error_naming_the_line(
    tmp_path_factory: pytest.TempPathFactory, content: str
) -> None:
    # Random *bytes* find the invalid UTF-8 bug pinned down by the xfail test below.
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    path.write_bytes(content.encode("utf-8", errors="surrogatepass"))
    try:
        for _record in iter_trace(path):
            pass
    except TraceError as error:
        assert error.line >= 1


def test_trace_file_with_invalid_utf8_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"dir": "in", "hex": "30323030"}\n\xff\xfe not utf-8\n')
    with pytest.raises(TraceError) as caught:
        list(iter_trace(path))
    assert caught.value.line == 2


# --- CSV disbursement validator ----------------------------------------------------------------

MEMBERS = {"M0001", "M0002", "M0003"}
csv_cells = st.sampled_from(["M0001", "M0002", "M0009", "", "1", "0", "-5", "2500000", "1e3"])


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    rows = ["member_id,amount"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 6))):
        cells = draw(st.lists(csv_cells | st.text(max_size=6), min_size=0, max_size=3))
        rows.append(",".join(cells))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(rows)
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        where = draw(st.integers(0, len(data)))
        data = (
            data[:where]
            + draw(st.sampled_from([b'"', b"\xff", b"\x00", b"\r", b'""']))
            + (data[where:])
        )
    return data


@fuzz_settings(400)
@given(data=csv_files())
def test_csv_validator_random_input(data: bytes) -> None:
    rows, problems = parse_rows(data, "f.csv", lambda ids: ids & MEMBERS)
    line_count = data.count(b"\n") + data.count(b"\r") + 2
    for problem in problems:
        assert 1 <= problem.line <= line_count and problem.column >= 1
        assert str(problem).startswith(f"f.csv:{problem.line}:")
    if not problems:
        assert rows and all(member in MEMBERS and amount >= 1 for member, amount in rows)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'honar.db'}"
    store = Store(url)
    store.migrate()
    demo.load_demo(store, Hsm(lmk=Lmk.test()))
    yield store
    store.close()


BATCHES = itertools.count(1)


@fuzz_settings(60)
@given(data=csv_files())
def test_csv_disbursement_applies_all_or_nothing(
    demo_store: Store, tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("csv") / "batch.csv"
    path.write_bytes(data)
    before = demo_store.totals(), demo_store.journal_head()
    try:
        report = disburse_file(
            demo_store,
            str(path),
            program_code="FUND-GEN",
            batch_id=f"fuzz-{next(BATCHES)}",
            business_date="2026-01-02",
            now="2026-01-02T10:00:00+00:00",
        )
    except DisbursementError as error:
        assert error.problems and all(p.line >= 1 for p in error.problems)
        assert (demo_store.totals(), demo_store.journal_head()) == before  # nothing applied
        return
    assert report.applied
    assert demo_store.totals().balanced
    assert demo_store.verify_journal() is None


# --- end to end: random frames over TCP to a running switch -------------------------------------


@pytest.fixture(scope="module")
def fuzz_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSwitch]:
    with running_switch(make_config(tmp_path_factory.mktemp("switch"))) as running:
        yield running


@st.composite
def tcp_sessions(draw: st.DrawFn) -> tuple[bytes, int]:
    """Bytes for one connection, and how many well-framed messages they hold at most."""
    parts: list[bytes] = []
    framed = 0
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["mutated", "mutated", "random", "raw", "valid"]))
        if kind == "raw":
            parts.append(draw(st.binary(min_size=1, max_size=40)))
            break  # after raw bytes the stream cannot be resynchronised
        if kind == "valid":
            payload = draw(st.sampled_from(SEEDS["shetab87"]))
        elif kind == "mutated":
            payload = draw(mutated(SEEDS["shetab87"]))
        else:
            payload = draw(st.binary(min_size=1, max_size=200))
        if payload:
            parts.append(frame(payload, Framing.ASCII4))
            framed += 1
    return b"".join(parts), framed


@fuzz_settings(60)
@given(session=tcp_sessions())
def test_tcp_random_frames_get_an_answer_a_drop_or_a_close(
    fuzz_switch: RunningSwitch, session: tuple[bytes, int]
) -> None:
    data, framed = session
    received, closed = exchange_raw(fuzz_switch.host, fuzz_switch.port, data, timeout_s=15.0)
    assert closed, "the switch neither answered everything nor closed within 15 s"
    framer = Framer(Framing.ASCII4, frame_size_max=9999)
    framer.receive_data(received)
    answers, failed = drain(framer)
    assert not failed and framer.buffered_size == 0, "the switch sent a broken frame"
    assert len(answers) <= framed
    dialect = get_dialect("shetab87")
    for answer in answers:
        response = decode(answer, dialect)  # everything the switch sends decodes
        # A response (or acknowledgement) MTI: the message function digit is odd.
        assert int(response.mti[2]) % 2 == 1 and len(response.get(39) or "") == 2


def test_tcp_switch_still_approves_after_the_fuzzing(fuzz_switch: RunningSwitch) -> None:
    """Runs after the fuzz property (file order): the switch still serves a valid purchase."""
    terminal = PosTerminal.demo("HNR00001")
    payload = terminal.purchase(pan=M0002[0], pin=M0002[1], amount=1_000)
    received, _closed = exchange_raw(
        fuzz_switch.host, fuzz_switch.port, frame(payload, Framing.ASCII4)
    )
    response, mac_ok = terminal.check_response(received[4:], payload)
    assert response.get(39) == "00" and mac_ok
    assert fuzz_switch.app.store.totals().balanced
    assert fuzz_switch.app.store.verify_journal() is None
