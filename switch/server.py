"""The asyncio TCP edge: connections, framing, limits, timeouts, graceful shutdown.

A thin transport around :class:`switch.service.Service` (or any ``handler``):

* one task per connection; beyond ``connections_max`` a new connection is closed at once;
* bytes go through the sans-IO :class:`switch.framing.Framer`; a bad or oversized length prefix
  closes the connection (after the requests already in flight have been answered);
* each frame is handled in its own task, at most ``in_flight_per_connection_max`` per
  connection; when that many are in flight the connection is not read (backpressure);
* responses are written as they complete (any order) under a per-connection lock, with drain;
* a connection silent for ``idle_timeout_s`` is closed;
* :meth:`SwitchServer.shutdown` stops accepting, stops reading, lets in-flight requests finish
  (up to ``graceful_timeout_s``), then closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from switch.dialects.base import Framing
from switch.framing import Framer, FramingError, frame
from switch.tls import AllowList

log = logging.getLogger("honar.server")

Handler = Callable[[bytes, str], Awaitable[bytes | None]]
READ_SIZE = 65536
WRITE_BUFFER_MAX = 1 << 20  # bytes queued for a slow reader before its requests wait


@dataclass(frozen=True)
class ServerLimits:
    """The server's named limits."""

    frame_size_max: int = 4096
    connections_max: int = 1000
    in_flight_per_connection_max: int = 64
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 10.0  # a frame begun must be whole by then (capped by idle)
    graceful_timeout_s: float = 10.0


class _Connection:
    def __init__(
        self,
        server: SwitchServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        label: str,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.label = label
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        limits = server.limits
        self.framer = Framer(server.framing, frame_size_max=limits.frame_size_max)
        self.slots = asyncio.Semaphore(limits.in_flight_per_connection_max)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.write_lock = asyncio.Lock()
        self.reader_task: asyncio.Task[None] | None = None
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False

    async def read_loop(self) -> None:
        limits = self.server.limits
        loop = asyncio.get_running_loop()
        frame_limit_s = min(limits.frame_timeout_s, limits.idle_timeout_s)
        frame_waited_s = 0.0  # time spent waiting for the rest of the frame begun
        while True:
            timeout_s = limits.idle_timeout_s
            partial = self.framer.buffered_size > 0
            if partial:
                # A frame begun must arrive whole in time: one byte now and then (slow loris)
                # does not keep a connection and its slot. Only time spent waiting for bytes
                # counts, not time this side spent not reading (backpressure).
                timeout_s = max(0.0, frame_limit_s - frame_waited_s)
            else:
                frame_waited_s = 0.0
            started = loop.time()
            try:
                # asyncio.timeout, not wait_for: wait_for wraps the read in a task of its own
                # (13 against 5 µs a read, docs/benchmarks.md run 6)
                async with asyncio.timeout(timeout_s):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                if self.framer.buffered_size:
                    log.warning(
                        "frame not completed in time; closing connection",
                        extra={
                            "conn": self.label,
                            "peer": self.peer,
                            "frame_timeout_s": frame_limit_s,
                        },
                    )
                    return
                log.info(
                    "idle connection closed",
                    extra={
                        "conn": self.label,
                        "peer": self.peer,
                        "idle_timeout_s": limits.idle_timeout_s,
                    },
                )
                return
            except ConnectionError as error:
                log.info("connection error", extra={"conn": self.label, "error": str(error)})
                return
            if partial:
                frame_waited_s += loop.time() - started
            if not data:
                if self.framer.buffered_size:
                    log.warning(
                        "connection closed in the middle of a frame; partial frame dropped",
                        extra={
                            "conn": self.label,
                            "peer": self.peer,
                            "bytes": self.framer.buffered_size,
                        },
                    )
                return
            self.framer.receive_data(data)
            while True:
                try:
                    payload = self.framer.next_frame()
                except FramingError as error:
                    log.warning(
                        "framing error; closing connection",
                        extra={"conn": self.label, "peer": self.peer, "error": str(error)},
                    )
                    return
                if payload is None:
                    break
                frame_waited_s = 0.0
                await self.slots.acquire()
                task = asyncio.create_task(self.process(payload))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)

    async def process(self, payload: bytes) -> None:
        try:
            self.server.trace(self.label, self.peer, "in", payload)
            response = await self.server.handler(payload, self.peer)
            if response is None:
                return
            if self.writer.is_closing():
                log.warning(
                    "response dropped: connection already closed", extra={"conn": self.label}
                )
                return
            self.server.trace(self.label, self.peer, "out", response)
            # Responses that complete in the same loop iteration (a committed batch) leave in
            # one write: one system call instead of one each.
            self.outgoing.append(frame(response, self.server.framing))
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
            transport = self.writer.transport
            if transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
                async with self.write_lock:
                    await self.writer.drain()
        except ConnectionError as error:
            log.info(
                "peer went away before its response",
                extra={"conn": self.label, "error": str(error)},
            )
        finally:
            # Leave the set in the same step as the slot is released, so the set never holds
            # more tasks than there are slots (the done callback alone runs a step later, after
            # the reader may already have started new tasks into the freed slots).
            self.in_flight.discard(asyncio.current_task())
            self.slots.release()

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outgoing and not self.writer.is_closing():
            self.writer.write(b"".join(self.outgoing))
        self.outgoing.clear()

    async def close(self, graceful_timeout_s: float) -> None:
        if self.in_flight:
            _done, pending = await asyncio.wait(set(self.in_flight), timeout=graceful_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "in-flight requests cancelled at close",
                    extra={"conn": self.label, "cancelled": len(pending)},
                )
        self.flush()
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class SwitchServer:
    """Serve ``handler`` over TCP with length-prefixed frames."""

    def __init__(
        self,
        handler: Handler,
        *,
        framing: Framing = Framing.ASCII4,
        limits: ServerLimits | None = None,
        trace: Callable[[str, str, str, bytes], None] | None = None,
        allow: AllowList | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.framing = framing
        self.limits = limits or ServerLimits()
        self.trace = trace or (lambda label, peer, direction, payload: None)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._labels = itertools.count(1)
        self.refused = 0
        self.allow = allow or AllowList(())
        self.tls = tls

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0 picks a free one); return the bound address."""
        self._server = await asyncio.start_server(
            self._on_connect, host, port, limit=self.limits.frame_size_max + 16, ssl=self.tls
        )
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        label = f"c{next(self._labels)}"
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        if not self.allow.permits(address):
            self.refused += 1
            log.warning(
                "connection refused: address not allowed", extra={"conn": label, "peer": address}
            )
            writer.close()
            return
        if len(self._connections) >= self.limits.connections_max or self._server is None:
            self.refused += 1
            log.warning(
                "connection refused: connections_max reached",
                extra={"conn": label, "connections_max": self.limits.connections_max},
            )
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        connection = _Connection(self, reader, writer, label)
        self._connections.add(connection)
        log.info("connection opened", extra={"conn": label, "peer": connection.peer})
        try:
            connection.reader_task = asyncio.create_task(connection.read_loop())
            try:
                await asyncio.shield(connection.reader_task)
            except asyncio.CancelledError:
                connection.reader_task.cancel()
            await connection.close(self.limits.graceful_timeout_s)
        finally:
            self._connections.discard(connection)
            self._handlers.discard(task)
            log.info("connection closed", extra={"conn": label})

    async def shutdown(self) -> None:
        """Stop accepting, stop reading, finish in-flight requests, close connections."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            if connection.reader_task is not None:
                connection.reader_task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.limits.graceful_timeout_s + 1)
        self._server = None
