"""Helpers for the events tests: a Mosquitto broker we can stop and start, a subscriber thread,
the publisher on a running switch's loop, and the PAN check applied to every event received.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt

from switch.config import Config, EventsConfig

from conftest import RunningSwitch, service_missing

M0002 = ("6362149173324546", "4321")  # demo cards (spec/demo-data.md)
M0006 = ("6362144899564327", "9876")  # limits raised for load
ENVIRONMENT = "test"
ROOT = f"honar/v1/{ENVIRONMENT}"
PAN_RUN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")

# Every event any test of this package received, for the suite-wide PAN check.
RECEIVED: list[tuple[str, str]] = []


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def full_pan_runs(payload: str) -> list[str]:
    """The 13-19 digit runs in an event's JSON text, the opaque ``event_id`` value left out.

    The event id is a hexadecimal digest and may hold long digit runs by chance; it is checked
    separately (it must not be all digits).
    """
    body = json.loads(payload)
    event_id = str(body.pop("event_id", ""))
    runs = PAN_RUN.findall(json.dumps(body))
    if event_id.isdigit():
        runs.append(event_id)
    return runs


class Mosquitto:
    """A Mosquitto broker on 127.0.0.1:``port`` with persistence (sessions survive restarts)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            service_missing("mosquitto (apt-get install mosquitto)")
        assert binary is not None
        self.binary = binary
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config_file = directory / "mosquitto.conf"
        self.config_file.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Started as root, mosquitto drops to user "mosquitto", which cannot write the
            # persistence file in our private temporary directory: stay who we are.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            f"log_dest file {directory}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker URL for ``[events] broker_url``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        assert self.process is None
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: see {self.directory}/mosquitto.log")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves its persistence file)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@dataclass
class Subscriber:
    """A persistent-session QoS 1 subscriber to ``honar/v1/test/#`` in its own thread.

    It reconnects by itself (every 0.1 s) when the broker goes away; messages land in
    ``messages`` as (topic, payload text), and in :data:`RECEIVED` for the suite-wide check.
    """

    url_port: int
    identifier: str
    messages: list[tuple[str, str]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stopping = False
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="subscriber", daemon=True)

    def start(self) -> Subscriber:
        """Start the thread; return self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._consume())

    async def _consume(self) -> None:
        while not self._stopping:
            try:
                client = aiomqtt.Client(
                    "127.0.0.1", self.url_port, identifier=self.identifier, clean_session=False
                )
                async with client:
                    await client.subscribe(f"{ROOT}/#", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        raw = message.payload
                        assert isinstance(raw, bytes | bytearray)
                        item = (message.topic.value, raw.decode())
                        with self._lock:
                            self.messages.append(item)
                            RECEIVED.append(item)
                        if self._stopping:
                            return
            except aiomqtt.MqttError:
                self.connected.clear()
                self.reconnects += 1
                await asyncio.sleep(0.1)

    def snapshot(self) -> list[tuple[str, dict[str, Any]]]:
        """The messages so far, decoded."""
        with self._lock:
            return [(t, json.loads(p)) for t, p in self.messages]

    def wait_for(
        self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool], timeout_s: float
    ) -> list[tuple[str, dict[str, Any]]]:
        """Wait until ``predicate(messages)`` holds; return the messages (or fail)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.snapshot()
            if predicate(got):
                return got
            time.sleep(0.02)
        got = self.snapshot()
        raise AssertionError(
            f"condition not met in {timeout_s} s; {len(got)} messages received, "
            f"subscriber connected {self.connected.is_set()}, reconnects {self.reconnects}"
        )

    def stop(self) -> None:
        """Stop the thread."""
        self._stopping = True
        for task in asyncio.all_tasks(self._loop):
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(5)


def with_events(config: Config, broker_port: int | None, **events: Any) -> Config:
    """``config`` with ``[events]`` for tests (fast reconnects and polls)."""
    base = EventsConfig(
        broker_url=f"mqtt://127.0.0.1:{broker_port}" if broker_port else "",
        environment=ENVIRONMENT,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.3,
        poll_interval_s=0.02,
        publish_timeout_s=5.0,
    )
    return replace(config, events=replace(base, **events))


@contextlib.contextmanager
def publishing(switch: RunningSwitch) -> Iterator[asyncio.Event]:
    """Run the switch's outbox publisher on its loop for the ``with`` block."""
    observability = switch.app.observability
    assert observability is not None
    stop = asyncio.Event()
    future = asyncio.run_coroutine_threadsafe(observability.publisher.run(stop), switch.loop)
    try:
        yield stop
    finally:
        switch.loop.call_soon_threadsafe(stop.set)
        future.result(10)


def send_all(host: str, port: int, payloads: list[bytes], timeout_s: float = 60.0) -> list[bytes]:
    """Send every payload on one connection without waiting (pipelined); return the responses."""
    from scripts.pos import PosClient

    async def run() -> list[bytes]:
        client = await PosClient.connect(host, port)
        try:
            sender = asyncio.create_task(_send(client, payloads))
            responses = [await client.receive(timeout_s) for _ in payloads]
            await sender
            return responses
        finally:
            await client.close()

    async def _send(client: Any, items: list[bytes]) -> None:
        for payload in items:
            await client.send(payload)

    return asyncio.run(run())


def ask(terminal: Any, host: str, port: int, payload: bytes) -> tuple[Any, bool | None]:
    """Send one request; return the decoded response and whether its MAC is right."""
    (raw,) = send_all(host, port, [payload], timeout_s=10.0)
    response: tuple[Any, bool | None] = terminal.check_response(raw, payload)
    return response
