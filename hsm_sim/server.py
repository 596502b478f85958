"""The simulated HSM on TCP: an asyncio server around the pure command table.

One task per connection reads bytes, splits them into host messages (`hsm_sim.protocol`) and
answers each in order; a client may pipeline many requests on one connection, and many clients
may connect at once (up to ``connections_max``). A request that cannot be framed (length past
``frame_size_max``, or too short for header and command) closes its connection; a request that
frames but is malformed gets its error code; an unexpected failure while answering is logged
and answered ``41`` (internal error). The server never dies of a request.

    server = HsmServer(HostCommands(Lmk.test()), port=0)
    await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from hsm_sim.commands import HostCommands
from hsm_sim.protocol import (
    FRAME_SIZE_MAX_DEFAULT,
    HEADER_LENGTH_DEFAULT,
    FramingError,
    HostMessage,
    HostMessageParser,
    build_response,
)

__all__ = ["HOST_DEFAULT", "PORT_DEFAULT", "HsmServer", "ServerLimits"]

logger = logging.getLogger(__name__)

HOST_DEFAULT = "127.0.0.1"
PORT_DEFAULT = 1500
READ_SIZE = 4096
ERROR_INTERNAL = "41"


@dataclass(frozen=True)
class ServerLimits:
    """Limits of the TCP face; each has a test that goes past it."""

    frame_size_max: int = FRAME_SIZE_MAX_DEFAULT
    connections_max: int = 64
    idle_timeout_s: float = 300.0
    stop_timeout_s: float = 5.0


class HsmServer:
    """Asyncio TCP server answering payShield host commands with a `HostCommands` table."""

    def __init__(
        self,
        commands: HostCommands,
        *,
        host: str = HOST_DEFAULT,
        port: int = PORT_DEFAULT,
        header_length: int = HEADER_LENGTH_DEFAULT,
        limits: ServerLimits | None = None,
        tls: ssl.SSLContext | None = None,
        allow: Callable[[str], bool] | None = None,
    ) -> None:
        self.commands = commands
        self.tls = tls
        self.allow = allow
        self.host = host
        self.port = port
        self.header_length = header_length
        self.limits = limits or ServerLimits()
        # Validates header length against the frame limit before anything listens.
        HostMessageParser(header_length, self.limits.frame_size_max)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.connections_refused = 0

    @property
    def connection_count(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    async def start(self) -> None:
        """Listen; with ``port=0`` the chosen port is in `port` afterwards."""
        assert self._server is None, "server already started"
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, ssl=self.tls
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("HSM listening on %s:%d (header %d)", self.host, self.port, self.header_length)

    async def stop(self) -> None:
        """Stop listening, close every connection and wait (bounded) for their tasks."""
        if self._server is None:
            return
        self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.limits.stop_timeout_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), self.limits.stop_timeout_s)
        self._server = None
        logger.info("HSM stopped")

    async def __aenter__(self) -> HsmServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def answer(self, message: HostMessage) -> bytes:
        """The framed response to one request; internal failures become error ``41``."""
        try:
            result = self.commands.handle(message.command, message.body)
        except Exception:
            # A bug in a handler must not take the server down; the log keeps the traceback.
            logger.exception("command %r failed", message.command)
            return build_response(message.header, message.command_bytes, ERROR_INTERNAL, b"")
        return build_response(
            message.header, message.command_bytes, result.error_code, result.fields
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        if self.allow is not None and not self.allow(address):
            self.connections_refused += 1
            logger.warning("connection refused: address %s not allowed", address)
            writer.close()
            return
        if len(self._connections) >= self.limits.connections_max:
            self.connections_refused += 1
            logger.warning("connection refused: %d connections open", len(self._connections))
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # stop() closes connections by cancelling them
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        parser = HostMessageParser(self.header_length, self.limits.frame_size_max)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), self.limits.idle_timeout_s)
            except TimeoutError:
                logger.info("closing idle connection %s", peer)
                return
            except OSError as error:
                logger.info("connection %s failed: %s", peer, error)
                return
            if not data:
                return
            parser.receive_data(data)
            try:
                while (message := parser.next_message()) is not None:
                    writer.write(self.answer(message))
            except FramingError as error:
                logger.warning("closing %s: %s", peer, error)
                with contextlib.suppress(OSError):
                    await writer.drain()
                return
            try:
                await writer.drain()
            except OSError as error:
                logger.info("connection %s failed: %s", peer, error)
                return
