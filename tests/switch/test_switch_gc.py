"""settle_gc: start-up's objects frozen, the young generation collected less often; only the
serving process asks for it."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from switch import app as app_module
from switch import cli


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Whatever a test does to the collector is undone after it."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_settle_gc_freezes_start_up_and_raises_the_young_threshold(gc_state: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector can free it

    kept = [Node() for _ in range(100)]
    middle, old = gc.get_threshold()[1:]
    before = gc.get_freeze_count()  # 0 on 3.11; CPython 3.12 starts with some frozen
    app_module.settle_gc()
    assert gc.get_freeze_count() > before + len(kept)
    assert gc.get_threshold() == (app_module.GC_YOUNG_THRESHOLD, middle, old)
    walked = {id(o) for o in gc.get_objects()}  # what a collection walks: not the frozen
    assert not walked & {id(n) for n in kept}
    # what comes after start-up is collected as before
    Node()
    assert gc.collect() >= 1


def test_honar_serve_settles_the_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_serve(config: Any, **options: Any) -> None:
        seen.update(options)

    monkeypatch.setattr(app_module, "serve", fake_serve)
    monkeypatch.delenv("HONAR_CONFIG", raising=False)
    args = argparse.Namespace(
        config=None,
        host=None,
        port=18599,
        framing=None,
        ledger_url=None,
        data_dir=None,
        mqtt=None,
        dialect=None,
        command="serve",
    )
    assert cli._serve(args) == 0
    assert seen.get("tune_gc") is True
