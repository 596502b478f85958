"""The per-connection in-flight bound, checked step by step in the event loop.

``in_flight_per_connection_max`` is enforced by a semaphore; the connection's set of tasks must
never hold more than that many, even in the loop step where a whole committed batch finishes at
once and the reader immediately starts new tasks into the freed slots.
"""

from __future__ import annotations

import asyncio
from typing import Any

from switch.framing import Framer, Framing, frame
from switch.server import ServerLimits, SwitchServer


class _RecordingSet(set[Any]):
    """A set that remembers the largest size it ever had."""

    largest = 0

    def add(self, element: Any) -> None:
        super().add(element)
        self.largest = max(self.largest, len(self))


async def _pipeline(in_flight_max: int, frames: int) -> tuple[int, int]:
    """Pipeline ``frames`` echo requests whose handlers finish in rounds of ``in_flight_max``;
    return (answers received, largest in-flight set seen)."""
    gate = asyncio.Event()

    async def handler(payload: bytes, peer: str) -> bytes:
        await gate.wait()
        return payload

    server = SwitchServer(handler, limits=ServerLimits(in_flight_per_connection_max=in_flight_max))
    host, port = await server.start("127.0.0.1", 0)
    recording = _RecordingSet()
    try:
        reader, writer = await asyncio.open_connection(host, port)
        while not server._connections:
            await asyncio.sleep(0.001)
        (connection,) = server._connections
        connection.in_flight = recording  # before any frame arrives
        writer.write(b"".join(frame(b"%06d" % n, Framing.ASCII4) for n in range(frames)))
        await writer.drain()
        framer = Framer(Framing.ASCII4, frame_size_max=64)
        answers = 0
        while answers < frames:
            # Every handler waiting on the gate is released in the same loop step.
            while len(connection.in_flight) < min(in_flight_max, frames - answers):
                await asyncio.sleep(0.001)
            gate.set()
            await asyncio.sleep(0)
            gate.clear()
            data = await asyncio.wait_for(reader.read(65536), timeout=5)
            assert data, "the server closed the connection"
            framer.receive_data(data)
            while framer.next_frame() is not None:
                answers += 1
        writer.close()
        await writer.wait_closed()
    finally:
        await server.shutdown()
    return answers, recording.largest


def test_in_flight_set_never_exceeds_the_bound() -> None:
    answers, largest = asyncio.run(_pipeline(in_flight_max=8, frames=200))
    assert answers == 200
    assert largest == 8
