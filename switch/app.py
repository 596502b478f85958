"""Wiring: build the switch from a :class:`switch.config.Config` and run it.

This is the one place that knows every package: it opens the ledger (migrating the schema and
loading the demo data into an empty database), loads the LMK into the HSM, builds the terminal
directory and the group committer, and serves until asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from hsm_sim.hsm import Hsm
from hsm_sim.keys import Lmk
from ledger import demo
from ledger.engine import GroupCommitter
from ledger.store import Store
from merchants.directory import Directory, Merchant, Terminal
from merchants.discounts import DiscountRule
from switch.calendar import BusinessCalendar
from switch.compiled import compiled_modules
from switch.config import Config
from switch.dialects import get_dialect
from switch.dialects.base import Framing
from switch.hsm_port import HsmPort, InProcessHsmPort
from switch.logs import LOG_FLUSH_INTERVAL_S, flush_logs
from switch.metrics import Metrics, Observability, TimedGroupCommitter, observe
from switch.server import ServerLimits, SwitchServer
from switch.service import Service
from switch.tls import AllowList, server_tls_context
from switch.trace import TraceWriter

log = logging.getLogger("honar.app")


def load_lmk(config: Config) -> Lmk:
    """The LMK named in the config, or the Thales test LMK set."""
    if config.hsm.lmk_file:
        return Lmk.from_file(Path(config.hsm.lmk_file))
    return Lmk.test()


def open_ledger(config: Config, hsm: Hsm) -> Store:
    """Open the ledger, apply migrations, and load the demo data when it is empty."""
    store = Store(config.ledger_url)
    store.migrate()
    if config.ledger.load_demo and store.is_empty():
        demo.load_demo(store, hsm)
    return store


def load_rules(store: Store) -> tuple[DiscountRule, ...]:
    """The discount rules stored in the ledger, checked (a bad rule stops the start)."""
    rules = []
    for row in store.discount_rules():
        rules.append(
            DiscountRule(
                code=row["code"],
                funded_by=row["funded_by"],
                valid_from=date.fromisoformat(row["valid_from"]),
                valid_to=date.fromisoformat(row["valid_to"]),
                chains=_set(row["chains"]),
                merchant_ids=_set(row["merchant_ids"]),
                mccs=_set(row["mccs"]),
                percent=row["percent"],
                fixed_amount=row["fixed_amount"],
                cap_amount=row["cap_amount"],
                uses_max=row["uses_max"],
                uses_period=row["uses_period"],
            )
        )
    return tuple(rules)


def _set(value: str) -> frozenset[str]:
    return frozenset(v for v in value.split(",") if v)


async def flush_logs_until(stop: asyncio.Event) -> None:
    """Write buffered log lines every LOG_FLUSH_INTERVAL_S, so a quiet switch holds none back."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOG_FLUSH_INTERVAL_S)
        flush_logs()


async def sweep_expired_holds(app: App, stop: asyncio.Event) -> None:
    """Release pre-authorization holds past their hold period, every sweep interval."""
    interval = app.config.switch.hold_sweep_interval_s
    calendar = app.service.calendar
    while not stop.is_set():
        now = app.service.clock()
        expired = await asyncio.to_thread(
            app.store.expire_pending,
            now.isoformat(),
            business_date=calendar.business_date(now).isoformat(),
        )
        if expired:
            log.info("holds expired", extra={"count": len(expired)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def build_directory(store: Store) -> Directory:
    """The terminal and merchant directory, refreshable from the ledger."""

    def terminal_of(record: object) -> Terminal:
        return Terminal(
            **{
                k: getattr(record, k)
                for k in ("id", "merchant_id", "key_scheme", "tmk", "tpk", "tak", "bdk")
            }
        )

    def reload(tid: str) -> Terminal | None:
        found = [t for t in store.terminals() if t.id == tid]
        return terminal_of(found[0]) if found else None

    merchants = [
        Merchant(m.id, m.name, m.mcc, m.city, m.chain, m.sheba, m.payable_account_id)
        for m in store.merchants()
    ]
    return Directory(merchants, [terminal_of(t) for t in store.terminals()], reload_terminal=reload)


@dataclass
class App:
    """A built switch: its parts, ready to serve."""

    config: Config
    store: Store
    hsm: Hsm
    committer: GroupCommitter
    service: Service
    server: SwitchServer
    tracer: TraceWriter | None = None
    observability: Observability | None = None  # events, velocity alerts, metrics

    def close(self) -> None:
        """Stop the committer (after its queue is empty) and release the database."""
        self.committer.stop()
        self.store.close()
        if self.tracer is not None:
            self.tracer.close()


def make_hsm_port(config: Config, hsm: Hsm) -> HsmPort:
    """The HSM the switch talks to: in process (default) or a payShield-style server on TCP."""
    if config.hsm.mode == "tcp":
        from hsm_sim.client import TcpHsmPort

        return TcpHsmPort(
            config.hsm.host,
            config.hsm.port,
            header_length=config.hsm.header_length,
            pool_size=config.hsm.pool_size,
            timeout_s=config.hsm.timeout_s,
        )
    return InProcessHsmPort(hsm)


def build_app(config: Config, *, hsm_port: HsmPort | None = None) -> App:
    """Build every part of the switch from ``config`` (nothing listens yet)."""
    hsm = Hsm(lmk=load_lmk(config))
    store = open_ledger(config, hsm)
    pvk_lmk = store.setting("pvk")
    if pvk_lmk is None:
        raise RuntimeError(
            "the ledger has no issuer PVK (setting 'pvk'); load demo data or issue cards first"
        )
    metrics = Metrics()
    committer = TimedGroupCommitter(store, batch_max=config.ledger.batch_max, metrics=metrics)
    committer.start()
    s = config.switch
    service = Service(
        dialect=get_dialect(s.dialect),
        store=store,
        committer=committer,
        hsm=hsm_port or make_hsm_port(config, hsm),
        local_hsm=hsm,
        directory=build_directory(store),
        pvk_lmk=pvk_lmk,
        calendar=BusinessCalendar(s.business_zone, s.cutover_time),
        rules=load_rules(store),
        program_accounts=store.program_accounts(),
        hold_period_s=s.hold_period_s,
        card_cache_max=s.card_cache_max,
    )
    limits = ServerLimits(
        frame_size_max=s.frame_size_max,
        connections_max=s.connections_max,
        in_flight_per_connection_max=s.in_flight_per_connection_max,
        idle_timeout_s=s.idle_timeout_s,
        frame_timeout_s=s.frame_timeout_s,
        graceful_timeout_s=s.graceful_timeout_s,
    )
    tracer = TraceWriter(
        config.trace_directory,
        file_size_max=config.trace.file_size_max,
        files_max=config.trace.files_max,
        enabled=config.trace.enabled,
    )
    server = SwitchServer(
        lambda payload, peer: service.handle(payload, peer=peer),
        framing=Framing(s.framing),
        limits=limits,
        trace=tracer.write,
        allow=AllowList(s.allowed_networks),
        tls=server_tls_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        if s.tls_cert_file
        else None,
    )
    observability = observe(config, store, service, server, committer, metrics)
    return App(config, store, hsm, committer, service, server, tracer, observability)


# CPython collects its young generation every 700 net allocations; the switch allocates a
# few hundred objects per request, nearly all freed by reference counting.
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> None:
    """Freeze what start-up built, and collect the young generation less often.

    A full collection walks every object the collector tracks. With what a started switch
    holds (modules, SQLAlchemy's metadata, caches: some 52,000 objects after start-up, 67,000
    to 69,000 under load), each took 27-35 ms, and under load one came every 2 s or so: a
    pause that every request in flight waits out (docs/benchmarks.md, run 6). Frozen objects
    are never walked again (nor ever collected: start-up's objects live as long as the
    process). For the process that serves, once.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def serve(
    config: Config,
    *,
    on_ready: Callable[[str, int], None] | None = None,
    stop: asyncio.Event | None = None,
    tune_gc: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then shut down gracefully.

    SIGUSR1 switches frame tracing on and off. ``tune_gc``: :func:`settle_gc` once the switch
    is built (``honar serve`` does; tests running several switches in one process do not).
    """
    app = await asyncio.to_thread(build_app, config)
    if tune_gc:
        settle_gc()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not possible outside the main thread (tests run the server in a thread).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if app.tracer is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, app.tracer.toggle)
    try:
        host, port = await app.server.start(config.switch.host, config.switch.port)
        log.info(
            "listening",
            extra={
                "host": host,
                "port": port,
                "dialect": config.switch.dialect,
                "compiled_modules": len(compiled_modules()),  # scripts/compile
            },
        )
        if on_ready is not None:
            on_ready(host, port)
        sweeper = asyncio.create_task(sweep_expired_holds(app, stop))
        log_flusher = asyncio.create_task(flush_logs_until(stop))
        if app.observability is not None:
            await app.observability.start(stop)
        await stop.wait()
        await sweeper
        await log_flusher
        log.info("shutting down: no new connections, finishing requests in flight")
        await app.server.shutdown()
        if app.observability is not None:
            await app.observability.stop()
    finally:
        await asyncio.to_thread(app.close)
        log.info("stopped")
