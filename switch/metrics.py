"""Prometheus metrics: one registry per switch, served over HTTP at ``/metrics``.

What is measured, and from where (the full list with types and labels is in
docs/observability.md):

* requests by MTI and response code, and latency per flow: a :class:`switch.service.Decision`
  observer (:meth:`Metrics.observe`);
* requests in flight: the server's handler wrapped by :meth:`Metrics.track_in_flight`;
* open connections: read from :attr:`switch.server.SwitchServer.connection_count` at scrape time;
* HSM latency per command: :class:`TimedHsmPort`, an :class:`switch.hsm_port.HsmPort` decorator;
* ledger commit batch sizes and latency: :class:`TimedGroupCommitter`;
* outbox lag (unpublished count, oldest age, quarantined): read from the ledger at scrape time;
* events published and quarantined, publisher connection state: :mod:`switch.publish`.

The registry is not the process-global one, so several switches (tests) can live in one process.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hsm_sim.hsm import MacDirection, PinCheck, WorkingKey
from ledger.domain import AuthorizationJob, JobResult
from ledger.engine import GroupCommitter
from ledger.outbox import Outbox
from ledger.store import Store
from switch.config import Config
from switch.hsm_port import HsmPort
from switch.publish import Publisher
from switch.velocity import OutboxEmitter, VelocityMonitor, VelocityObserver

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from switch.server import SwitchServer
    from switch.service import Decision, Service

log = logging.getLogger("honar.metrics")

# Request latency buckets (seconds): the switch answers in milliseconds; the target p99 is 10 ms.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HSM_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# A bucket bound as prometheus_client writes it in ``le`` ("0.005", "1e+06", "+Inf").
_le: Callable[[float], str] = floatToGoString


class LightHistogram(Collector):
    """A histogram for the per-request path: plain counts under one lock, exported in
    Prometheus' histogram form at scrape time (``_bucket`` with ``le``, ``_count``, ``_sum``).

    ``prometheus_client``'s own histogram takes a lock per bucket and per sum and walks its
    buckets in Python: with four observations, a counter and a gauge per purchase, the metrics
    were 2.8 % of the switch's instructions per purchase (docs/benchmarks.md, run 6). Label
    values are given as a tuple to :meth:`observe`.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == math.inf:  # the +Inf bucket is always there
            bounds.pop()
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing, got {buckets}")
        if "le" in labels:
            raise ValueError(f"{name}: 'le' is the bucket label, not a label of its own")
        self.name, self.documentation = name, documentation
        self.label_names = tuple(labels)
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()
        # label values -> [count per bucket ..., count above the last bound, sum]
        self._series: dict[tuple[str, ...], list[float]] = {}
        if not self.label_names:  # shown from the start, zeros, as prometheus_client does
            self._series[()] = [0] * (len(self.bounds) + 2)
        registry.register(self)

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        """Count one observation (``le`` buckets: a value equal to a bound counts in it)."""
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                if len(labels) != len(self.label_names):
                    raise ValueError(f"{self.name}: labels {self.label_names}, got {labels}")
                series = self._series[labels] = [0] * (len(self.bounds) + 2)
            series[index] += 1
            series[-1] += value

    def collect(self) -> Iterable[Metric]:
        """See :class:`prometheus_client.registry.Collector`."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        with self._lock:
            snapshot = [(labels, list(series)) for labels, series in self._series.items()]
        for labels, series in snapshot:
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, math.inf), series[:-1], strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric(list(labels), buckets, sum_value=series[-1])
        yield family


class LightCounter(Collector):
    """A labelled counter for the per-request path, kept as plain numbers (see
    :class:`LightHistogram`); exported as ``<name>_total``."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self.label_names = tuple(labels)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        """Add ``amount`` (not negative) to the count of ``labels``."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up, got {amount}")
        with self._lock:
            found = self._counts.get(labels)
            if found is None:
                if len(labels) != len(self.label_names):
                    raise ValueError(f"{self.name}: labels {self.label_names}, got {labels}")
                found = 0
            self._counts[labels] = found + amount

    def collect(self) -> Iterable[Metric]:
        """See :class:`prometheus_client.registry.Collector`."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        with self._lock:
            snapshot = list(self._counts.items())
        for labels, count in snapshot:
            family.add_metric(list(labels), count)
        yield family


class Metrics:
    """Every metric of one switch, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # updated on every request: the light collectors above
        self.requests = LightCounter(
            "honar_requests",
            "Requests answered, by request MTI and response code.",
            ["mti", "response_code"],
            registry=r,
        )
        self.request_latency = LightHistogram(
            "honar_request_duration_seconds",
            "Time from a request's bytes to its response's bytes, by flow.",
            ["flow"],
            LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = 0  # requests received and not yet answered (loop thread only)
        r.register(
            _GaugeFunction(
                "honar_requests_in_flight",
                "Requests received and not yet answered.",
                lambda: self.in_flight,
            )
        )
        self.hsm_latency = LightHistogram(
            "honar_hsm_duration_seconds",
            "Time the HSM took per command (as the switch waited for it).",
            ["command"],
            HSM_BUCKETS_S,
            registry=r,
        )
        self.hsm_errors = Counter(
            "honar_hsm_errors",
            "HSM calls that raised (unavailable, timeout).",
            ["command"],
            registry=r,
        )
        self.commit_batch_size = LightHistogram(
            "honar_ledger_commit_batch_size",
            "Authorization jobs per ledger database transaction (group commit).",
            [],
            BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.commit_latency = LightHistogram(
            "honar_ledger_commit_duration_seconds",
            "Time to run and commit one batch of authorization jobs.",
            [],
            LATENCY_BUCKETS_S,
            registry=r,
        )
        self.events_published = Counter(
            "honar_events_published",
            "Outbox events acknowledged by the broker (PUBACK).",
            registry=r,
        )
        self.events_quarantined = Counter(
            "honar_events_quarantined",
            "Outbox events refused by the publisher for PAN-shaped content.",
            registry=r,
        )
        self.publisher_connected = Gauge(
            "honar_events_publisher_connected", "1 while connected to the MQTT broker.", registry=r
        )
        self.publisher_reconnects = Counter(
            "honar_events_publisher_reconnects", "Failed or lost broker connections.", registry=r
        )
        self.velocity_alerts = Counter(
            "honar_velocity_alerts", "Velocity alerts raised, by rule.", ["rule"], registry=r
        )
        self._http: Any = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    # --- sources -----------------------------------------------------------------------------

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once: ``labels`` costs more than the count.

        Label values here are the switch's own (HSM command names, velocity rule names), so
        the table stays small.
        """
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe(self, decision: Decision) -> None:
        """Decision observer: count the request and its latency."""
        self.requests.inc((decision.mti, decision.response_code))
        self.request_latency.observe(decision.elapsed_s, (decision.kind,))

    def track_in_flight(
        self, handler: Callable[[bytes, str], Awaitable[bytes | None]]
    ) -> Callable[[bytes, str], Awaitable[bytes | None]]:
        """Wrap a server handler so that requests in flight are counted."""

        async def tracked(payload: bytes, peer: str) -> bytes | None:
            self.in_flight += 1
            try:
                return await handler(payload, peer)
            finally:
                self.in_flight -= 1

        return tracked

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Report ``count()`` (the server's open connections) at every scrape."""
        self.registry.register(_GaugeFunction("honar_connections_open", "Open connections.", count))

    def watch_committer(self, committer: GroupCommitter) -> None:
        """Report the group committer's own counters at every scrape."""
        self.registry.register(_CommitterCollector(committer))

    def watch_outbox(self, outbox: Outbox, clock: Callable[[], datetime]) -> None:
        """Report the outbox lag (read from the ledger) at every scrape."""
        self.registry.register(_OutboxCollector(outbox, clock))

    # --- HTTP --------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) in a thread; return the address."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        bound = server.server_address
        log.info("metrics listening", extra={"host": bound[0], "port": bound[1]})
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop the HTTP server, if serving."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _GaugeFunction(Collector):
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.read())


class _CommitterCollector(Collector):
    def __init__(self, committer: GroupCommitter) -> None:
        self.committer = committer

    def collect(self) -> Iterable[Metric]:
        c = self.committer
        yield CounterMetricFamily(
            "honar_ledger_batches", "Ledger batches committed.", value=c.batches
        )
        yield CounterMetricFamily(
            "honar_ledger_jobs", "Authorization jobs committed.", value=c.jobs
        )
        yield CounterMetricFamily(
            "honar_ledger_lock_retries",
            "Jobs re-run after a lock conflict (PostgreSQL).",
            value=c.lock_retries,
        )


class _OutboxCollector(Collector):
    def __init__(self, outbox: Outbox, clock: Callable[[], datetime]) -> None:
        self.outbox, self.clock = outbox, clock

    def collect(self) -> Iterator[Metric]:
        lag = self.outbox.lag()
        yield GaugeMetricFamily(
            "honar_outbox_unpublished",
            "Events in the outbox not yet published.",
            value=lag.unpublished,
        )
        yield GaugeMetricFamily(
            "honar_outbox_oldest_age_seconds",
            "Age of the oldest unpublished event (0 when none waits).",
            value=lag.oldest_age_s(self.clock()),
        )
        yield GaugeMetricFamily(
            "honar_outbox_quarantined",
            "Events kept back for PAN-shaped content.",
            value=lag.quarantined,
        )


class TimedGroupCommitter(GroupCommitter):
    """:class:`ledger.engine.GroupCommitter` that reports each batch's size and commit time.

    It also holds :attr:`write_lock` around each batch, so that the outbox's own writes (marks,
    alerts) from this process never interleave with a batch (see :class:`ledger.outbox.Outbox`).
    """

    def __init__(self, store: Any, *, batch_max: int = 256, metrics: Metrics) -> None:
        super().__init__(store, batch_max=batch_max)
        self.metrics = metrics
        self.write_lock = threading.RLock()

    def _commit_batch(
        self,
        batch: list[tuple[AuthorizationJob, concurrent.futures.Future[JobResult]]],
        attempt: int = 1,
    ) -> None:
        started = time.perf_counter()
        with self.write_lock:
            super()._commit_batch(batch, attempt)
        if attempt == 1:  # retries of lock conflicts are inside this one's time
            self.metrics.commit_latency.observe(time.perf_counter() - started)
            self.metrics.commit_batch_size.observe(len(batch))


class TimedHsmPort:
    """An :class:`switch.hsm_port.HsmPort` that times every call of the port it wraps."""

    def __init__(self, port: HsmPort, metrics: Metrics) -> None:
        self.port = port
        self.metrics = metrics

    async def _timed(self, command: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        except Exception:
            self.metrics.child(self.metrics.hsm_errors, command).inc()
            raise
        finally:
            self.metrics.hsm_latency.observe(time.perf_counter() - started, (command,))

    async def verify_mac(self, tak_lmk: str, data: bytes, mac: bytes) -> bool:
        """See :meth:`HsmPort.verify_mac`."""
        return bool(await self._timed("verify_mac", self.port.verify_mac(tak_lmk, data, mac)))

    async def generate_mac(self, tak_lmk: str, data: bytes) -> bytes:
        """See :meth:`HsmPort.generate_mac`."""
        result: bytes = await self._timed("generate_mac", self.port.generate_mac(tak_lmk, data))
        return result

    async def verify_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, mac: bytes, direction: MacDirection
    ) -> bool:
        """See :meth:`HsmPort.verify_mac_dukpt`."""
        call = self.port.verify_mac_dukpt(bdk_lmk, ksn, data, mac, direction)
        return bool(await self._timed("verify_mac_dukpt", call))

    async def generate_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, direction: MacDirection
    ) -> bytes:
        """See :meth:`HsmPort.generate_mac_dukpt`."""
        call = self.port.generate_mac_dukpt(bdk_lmk, ksn, data, direction)
        result: bytes = await self._timed("generate_mac_dukpt", call)
        return result

    async def verify_pin_pvv(
        self, tpk_lmk: str, pvk_lmk: str, pin_block: bytes, pan: str, pvki: int, pvv: str
    ) -> PinCheck:
        """See :meth:`HsmPort.verify_pin_pvv`."""
        call = self.port.verify_pin_pvv(tpk_lmk, pvk_lmk, pin_block, pan, pvki, pvv)
        result: PinCheck = await self._timed("verify_pin_pvv", call)
        return result

    async def verify_pin_pvv_dukpt(
        self,
        bdk_lmk: str,
        ksn: bytes,
        pvk_lmk: str,
        pin_block: bytes,
        pan: str,
        pvki: int,
        pvv: str,
    ) -> PinCheck:
        """See :meth:`HsmPort.verify_pin_pvv_dukpt`."""
        call = self.port.verify_pin_pvv_dukpt(bdk_lmk, ksn, pvk_lmk, pin_block, pan, pvki, pvv)
        result: PinCheck = await self._timed("verify_pin_pvv_dukpt", call)
        return result

    async def generate_working_key(self, tmk_lmk: str, key_type: str) -> WorkingKey:
        """See :meth:`HsmPort.generate_working_key`."""
        call = self.port.generate_working_key(tmk_lmk, key_type)
        key: WorkingKey = await self._timed("generate_working_key", call)
        return key


def utc_now() -> datetime:
    """The current time in UTC (the default clock for outbox ages)."""
    return datetime.now(UTC)


class Observability:
    """Events, alerts and metrics of one switch, wired to its parts (see :func:`observe`)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        outbox: Outbox,
        emitter: OutboxEmitter,
        publisher: Publisher,
        velocity: VelocityMonitor | None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.outbox = outbox
        self.emitter = emitter
        self.publisher = publisher
        self.velocity = velocity
        self.metrics_address: tuple[str, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, stop: asyncio.Event) -> None:
        """Start the publisher task (broker configured) and the /metrics server (enabled)."""
        if self.config.metrics.enabled:
            m = self.config.metrics
            self.metrics_address = await asyncio.to_thread(self.metrics.serve, m.host, m.port)
        if self.config.events.broker_url:
            self._tasks.append(asyncio.create_task(self.publisher.run(stop), name="publisher"))
        else:
            log.warning("no [events] broker_url: events stay in the outbox")

    async def stop(self) -> None:
        """After ``stop`` was set: finish outbox writes, the publisher's batch, /metrics."""
        await self.emitter.drain()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.events.publish_timeout_s + 1)
        await asyncio.to_thread(self.metrics.close)


def observe(
    config: Config,
    store: Store,
    service: Service,
    server: SwitchServer,
    committer: GroupCommitter,
    metrics: Metrics,
) -> Observability:
    """Wire metrics, velocity alerts and key-exchange events into a built switch."""
    lock = committer.write_lock if isinstance(committer, TimedGroupCommitter) else None
    outbox = Outbox(store.engine, lock)
    emitter = OutboxEmitter(outbox.write_events, clock=service.clock)
    # Key exchanges write their keys/exchange event with the new keys (Store.set_terminal_keys).
    service.hsm = TimedHsmPort(service.hsm, metrics)
    server.handler = metrics.track_in_flight(server.handler)
    metrics.watch_connections(lambda: server.connection_count)
    metrics.watch_committer(committer)
    metrics.watch_outbox(outbox, service.clock)
    service.observers.append(metrics.observe)
    velocity = None
    if config.velocity.enabled:
        velocity = VelocityMonitor(config.velocity, clock=service.clock)
        service.observers.append(
            VelocityObserver(
                velocity, emitter, lambda rule: metrics.child(metrics.velocity_alerts, rule).inc()
            )
        )
    publisher = Publisher(outbox, config.events, metrics=metrics)
    return Observability(config, metrics, outbox, emitter, publisher, velocity)
