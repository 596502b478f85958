"""The events publisher: drains the ledger's outbox to MQTT (aiomqtt lives here only).

Theory of operation (docs/observability.md has the consumer's view):

* Rows are read from the outbox in ``id`` order (the commit order of their ledger transactions)
  and published one at a time at QoS 1: the next row is sent only after the broker's PUBACK for
  the previous one, so events reach the broker in outbox order on every topic. A row is marked
  published after its PUBACK; a crash or disconnect between PUBACK and the mark means the row is
  sent again later, which is why every payload carries ``event_id`` for de-duplication.
* Topics are ``honar/v1/{environment}/{topic}``, ``topic`` as stored (``transactions/purchase``).
* Before sending, each payload is decoded and checked: any key, string or number with a run of
  13-19 digits (a possible full PAN) makes the row *quarantined* (``outbox.quarantined_at``):
  it is never published, an error is logged (with the offending JSON path, not the value), and
  publishing goes on with the next row. Undecodable JSON is quarantined the same way.
* Losing the broker (refused connection, lost connection, PUBACK timeout) closes the client and
  reconnects after a delay that doubles from ``reconnect_initial_s`` up to ``reconnect_max_s``
  (with jitter); when it is back, publishing resumes at the oldest unpublished row.
* Without ``[events] broker_url`` the publisher does not run; events wait in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiomqtt

from ledger.outbox import Outbox, OutboxRow, pan_shaped_fields
from switch.config import EventsConfig

if TYPE_CHECKING:
    from switch.metrics import Metrics

log = logging.getLogger("honar.events")

TOPIC_ROOT = "honar/v1"
MQTT_PORT = 1883
MQTTS_PORT = 8883


@dataclass(frozen=True)
class Broker:
    """Where the broker is, parsed from ``mqtt://host:port`` or ``mqtts://host:port``."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """Parse a broker URL.

        >>> Broker.parse("mqtt://127.0.0.1:1884")
        Broker(host='127.0.0.1', port=1884, tls=False)
        >>> Broker.parse("mqtts://broker.example")
        Broker(host='broker.example', port=8883, tls=True)
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker URL {url!r}: expected mqtt://host[:port] or mqtts://...")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (MQTTS_PORT if tls else MQTT_PORT), tls)


def topic_prefix(environment: str) -> str:
    """The root of every topic for ``environment``: ``honar/v1/{environment}``."""
    return f"{TOPIC_ROOT}/{environment}"


def make_client(
    config: EventsConfig,
    *,
    broker_url: str | None = None,
    identifier: str | None = None,
    clean_session: bool = True,
) -> aiomqtt.Client:
    """An aiomqtt client for the configured broker (credentials and TLS from ``config``)."""
    broker = Broker.parse(broker_url or config.broker_url)
    tls_context = None
    if broker.tls:
        tls_context = ssl.create_default_context(cafile=config.tls_ca_file or None)
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=config.username or None,
        password=config.password or None,
        identifier=identifier,
        clean_session=clean_session,
        tls_context=tls_context,
        timeout=config.publish_timeout_s,
    )


class Publisher:
    """Publishes the outbox to the broker until stopped (one task)."""

    def __init__(
        self,
        outbox: Outbox,
        config: EventsConfig,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        broker_url: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.broker_url = broker_url or config.broker_url
        self.prefix = topic_prefix(config.environment)
        self.identifier = config.client_id or f"honar-publisher-{config.environment}-{os.getpid()}"
        self.published = 0
        self.quarantined = 0
        self.connects = 0
        self.connected = False

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, reconnecting with bounded exponential backoff."""
        if not self.broker_url:
            log.warning("no [events] broker_url: events stay in the outbox")
            return
        broker = Broker.parse(self.broker_url)
        delay = self.config.reconnect_initial_s
        while not stop.is_set():
            client = make_client(
                self.config, broker_url=self.broker_url, identifier=self.identifier
            )
            try:
                async with client:
                    self._set_connected(True)
                    self.connects += 1
                    log.info(
                        "events publisher connected",
                        extra={"broker": broker.host, "broker_port": broker.port},
                    )
                    delay = self.config.reconnect_initial_s
                    await self._publish_until(client, stop)
            except aiomqtt.MqttError as error:
                if self.metrics is not None:
                    self.metrics.publisher_reconnects.inc()
                log.warning(
                    "events broker unavailable; retrying",
                    extra={
                        "broker": broker.host,
                        "broker_port": broker.port,
                        "error": str(error),
                        "retry_s": round(delay, 3),
                    },
                )
            finally:
                self._set_connected(False)
            if stop.is_set():
                break
            # Jitter keeps several publishers from reconnecting in lockstep.
            await _wait(stop, delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, self.config.reconnect_max_s)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if self.metrics is not None:
            self.metrics.publisher_connected.set(1 if connected else 0)

    async def _publish_until(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while not stop.is_set():
            rows = await asyncio.to_thread(self.outbox.unpublished, self.config.batch_max)
            if not rows:
                await _wait(stop, self.config.poll_interval_s)
                continue
            await self.publish_rows(client, rows)

    async def publish_rows(self, client: aiomqtt.Client, rows: list[OutboxRow]) -> None:
        """Publish ``rows`` in order, one PUBACK at a time; mark what was done, even on error."""
        published: list[int] = []
        quarantined: list[int] = []
        try:
            for row in rows:
                if refuse(row):
                    quarantined.append(row.id)
                    continue
                await client.publish(
                    f"{self.prefix}/{row.topic}",
                    row.payload.encode(),
                    qos=1,
                    timeout=self.config.publish_timeout_s,
                )
                published.append(row.id)
        finally:
            now = self.clock().isoformat()
            if quarantined:
                await asyncio.to_thread(self.outbox.mark_quarantined, quarantined, now)
            if published:
                await asyncio.to_thread(self.outbox.mark_published, published, now)
            self.published += len(published)
            self.quarantined += len(quarantined)
            if self.metrics is not None:
                self.metrics.events_published.inc(len(published))
                self.metrics.events_quarantined.inc(len(quarantined))


def refuse(row: OutboxRow) -> bool:
    """True (and an error logged) when ``row`` must not be published: PAN-shaped or not JSON."""
    try:
        body = json.loads(row.payload)
    except ValueError:
        log.error(
            "event quarantined: payload is not JSON",
            extra={"outbox_id": row.id, "topic": row.topic},
        )
        return True
    bad = pan_shaped_fields(body)
    if bad:
        # The paths say where to look; the values themselves are never logged.
        log.error(
            "event quarantined: PAN-shaped content",
            extra={"outbox_id": row.id, "event_id": row.event_id, "topic": row.topic, "paths": bad},
        )
        return True
    return False


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
