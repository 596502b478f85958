"""The HSM simulator over real TCP: framing, pipelining, bad input, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hsm_sim.commands import HostCommands
from hsm_sim.keys import Lmk
from hsm_sim.protocol import HostMessageParser, build_request, parse_response
from hsm_sim.server import HsmServer, ServerLimits

LMK = Lmk.test()
BU_FIELDS = b"0200406FBB23A5214DF"
BU_ANSWER = b"0035BBE340A4B763"


def with_server(
    test: Callable[[HsmServer], Awaitable[None]], limits: ServerLimits | None = None
) -> None:
    async def run() -> None:
        server = HsmServer(HostCommands(LMK), port=0, limits=limits)
        async with server:
            await asyncio.wait_for(test(server), 20)

    asyncio.run(run())


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    parser = HostMessageParser(4)
    frames: list[bytes] = []
    while len(frames) < count:
        while (frame := parser.next_frame()) is not None:
            frames.append(frame)
        if len(frames) >= count:
            break
        data = await reader.read(4096)
        assert data, f"connection closed after {len(frames)} of {count} answers"
        parser.receive_data(data)
    return frames


async def closed(reader: asyncio.StreamReader) -> bool:
    data = await asyncio.wait_for(reader.read(4096), 5)
    return data == b""


def test_nc_answer_layout() -> None:
    async def test(server: HsmServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(build_request(b"HEAD", "NC", b""))
        raw = await reader.readexactly(2)
        length = int.from_bytes(raw, "big")
        body = await reader.readexactly(length)
        assert length == 4 + 2 + 2 + 16 + 9
        assert body == b"HEADND00" + LMK.check_value().encode() + b"HONAR-SIM"
        writer.close()

    with_server(test)


def test_fifty_clients_with_pipelined_requests_are_all_answered() -> None:
    async def client(server: HsmServer, number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        requests = [
            build_request(f"{number:02d}{i:02d}".encode(), "BU", BU_FIELDS) for i in range(20)
        ]
        writer.write(b"".join(requests))  # all in flight at once
        await writer.drain()
        frames = await read_frames(reader, 20)
        for i, frame in enumerate(frames):
            response = parse_response(frame)
            assert response.header == f"{number:02d}{i:02d}".encode()
            assert (response.response_code, response.error_code) == ("BV", "00")
            assert response.body == BU_ANSWER
        writer.close()

    async def test(server: HsmServer) -> None:
        await asyncio.gather(*(client(server, n) for n in range(50)))

    with_server(test)


def test_bytes_arriving_one_at_a_time_are_reassembled() -> None:
    async def test(server: HsmServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for byte in build_request(b"0001", "BU", BU_FIELDS):
            writer.write(bytes([byte]))
            await writer.drain()
        (frame,) = await read_frames(reader, 1)
        assert parse_response(frame).body == BU_ANSWER
        writer.close()

    with_server(test)


def test_malformed_requests_get_error_codes_and_the_server_keeps_serving() -> None:
    async def test(server: HsmServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        bad = [
            build_request(b"0001", "ZZ", b"anything"),  # unknown command
            build_request(b"0002", "CA", b"U8463435F"),  # truncated
            build_request(b"0003", "BU", b"\xff\xfe\x00garbage"),  # not even ASCII
            b"\x00\x08HEAD\xff\xffzz",  # a command code that is not text
            build_request(b"0005", "BU", BU_FIELDS),
        ]
        writer.write(b"".join(bad))
        frames = await read_frames(reader, 5)
        answers = [parse_response(f) for f in frames]
        assert [(a.response_code, a.error_code) for a in answers[:3]] == [
            ("Z[", "68"),
            ("CB", "15"),
            ("BV", "15"),
        ]
        assert answers[3].error_code == "68"
        assert answers[4].body == BU_ANSWER
        writer.close()
        # ... and a new client is served too.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(build_request(b"0006", "NC", b""))
        (frame,) = await read_frames(reader, 1)
        assert parse_response(frame).error_code == "00"
        writer.close()

    with_server(test)


def test_internal_error_is_answered_41() -> None:
    async def test(server: HsmServer) -> None:
        def broken(command: str, body: bytes) -> object:
            raise RuntimeError("bug")

        server.commands.handle = broken  # type: ignore[assignment,method-assign]
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(build_request(b"0001", "NC", b""))
        (frame,) = await read_frames(reader, 1)
        assert parse_response(frame).error_code == "41"
        writer.close()

    with_server(test)


def test_oversized_length_closes_the_connection() -> None:
    async def test(server: HsmServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write((1025).to_bytes(2, "big") + b"HEADNC")
        assert await closed(reader)
        # A length too short for header and command cannot be framed either.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x00\x03HEA")
        assert await closed(reader)

    with_server(test, ServerLimits(frame_size_max=1024))


def test_connections_beyond_the_cap_are_closed() -> None:
    async def test(server: HsmServer) -> None:
        kept = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        for reader, writer in kept:  # make sure all three are being served
            writer.write(build_request(b"0001", "NC", b""))
            await read_frames(reader, 1)
        reader, _writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed(reader)
        assert server.connections_refused == 1
        for _reader, writer in kept:
            writer.close()

    with_server(test, ServerLimits(connections_max=3))


def test_idle_connections_are_closed() -> None:
    async def test(server: HsmServer) -> None:
        reader, _writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed(reader)

    with_server(test, ServerLimits(idle_timeout_s=0.2))


def test_stop_closes_open_connections() -> None:
    async def run() -> None:
        server = HsmServer(HostCommands(LMK), port=0)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(build_request(b"0001", "NC", b""))
        await read_frames(reader, 1)
        await server.stop()
        assert await closed(reader)
        assert server.connection_count == 0

    asyncio.run(run())


def test_header_length_is_configurable() -> None:
    async def run() -> None:
        async with HsmServer(HostCommands(LMK), port=0, header_length=0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(build_request(b"", "B2", b"0004PING"))
            length = int.from_bytes(await reader.readexactly(2), "big")
            assert await reader.readexactly(length) == b"B300PING"
            writer.close()

    asyncio.run(run())
