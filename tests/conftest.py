"""Shared fixtures: a running switch on a free port, backed by a fresh ledger.

``running_switch`` starts the real server (the same wiring as ``honar serve``) in a thread with
its own event loop, so tests can talk to it over real TCP with the POS simulator.
PostgreSQL and Mosquitto tests need their services; without them they skip on a laptop, but
under CI=true a missing service is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from switch.app import App, build_app
from switch.compiled import require_current
from switch.config import Config, LedgerConfig, SwitchConfig
from switch.hsm_port import HsmPort

# The suite runs against the compiled modules when they are built (scripts/compile): never
# against a build older than its sources.
require_current()

PG_ADMIN_URL = os.environ.get("HONAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def service_missing(what: str) -> None:
    """Skip on a laptop, fail under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not available, and CI=true makes that a failure")
    pytest.skip(f"{what} is not available")


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database; yield its SQLAlchemy URL; drop it afterwards."""
    import psycopg

    name = f"honar_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        service_missing(f"PostgreSQL ({PG_ADMIN_URL})")
        raise  # unreachable: service_missing raises
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class RunningSwitch:
    """A switch serving on ``host:port`` in a background thread."""

    app: App
    host: str
    port: int
    loop: asyncio.AbstractEventLoop

    def shutdown(self) -> None:
        """Graceful shutdown, as on SIGTERM."""
        asyncio.run_coroutine_threadsafe(self.app.server.shutdown(), self.loop).result(30)


@contextlib.contextmanager
def running_switch(config: Config, *, hsm_port: HsmPort | None = None) -> Iterator[RunningSwitch]:
    """Build and serve the switch for the duration of the ``with`` block."""
    app = build_app(config, hsm_port=hsm_port)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="switch-loop", daemon=True)
    thread.start()
    try:
        host, port = asyncio.run_coroutine_threadsafe(
            app.server.start(config.switch.host, 0), loop
        ).result(10)
        running = RunningSwitch(app, host, port, loop)
        yield running
        running.shutdown()
    finally:
        # Let every task still on the loop finish its own clean-up now, while this test's log
        # capture is open, rather than when the loop is garbage-collected later.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        app.close()
        loop.close()


async def _cancel_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def make_config(tmp_path: Path, ledger_url: str = "", **switch: object) -> Config:
    """A config for tests: fresh SQLite under ``tmp_path`` unless ``ledger_url`` is given."""
    base = Config(data_dir=str(tmp_path))
    return replace(
        base,
        switch=replace(SwitchConfig(), port=0, **switch),  # type: ignore[arg-type]
        ledger=LedgerConfig(url=ledger_url),
    )


@pytest.fixture(params=["shetab87", "shetab93"])
def dialect_name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each dialect in turn; the POS simulator speaks it too."""
    name = str(request.param)
    monkeypatch.setattr("scripts.pos.DEFAULT_DIALECT", name)
    return name


@pytest.fixture
def switch_any_dialect(tmp_path: Path, dialect_name: str) -> Iterator[RunningSwitch]:
    """A switch on a fresh SQLite ledger speaking ``dialect_name``."""
    with running_switch(make_config(tmp_path, dialect=dialect_name)) as running:
        yield running


@pytest.fixture
def switch_sqlite(tmp_path: Path) -> Iterator[RunningSwitch]:
    """A switch on a fresh embedded SQLite ledger with the demo data."""
    with running_switch(make_config(tmp_path)) as running:
        yield running
