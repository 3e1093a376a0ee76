"""A started server freezes what start-up left and collects its first GC generation less often
(app/gc_tuning.py); GC_GEN0_THRESHOLD=0 leaves Python's collector as it is."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from app.gc_tuning import calm_step, setup_gc
from app.settings import Settings


class _App:
    """Just enough of a Sanic app to register and run the after_server_start listener."""

    def __init__(self, settings: Settings) -> None:
        self.ctx = SimpleNamespace(settings=settings)
        self.listeners: list[Callable[[Any], Any]] = []
        self.tasks: list[str] = []

    def after_server_start(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        self.listeners.append(fn)
        return fn

    def add_task(self, coro: Any, name: str = "") -> None:
        self.tasks.append(name)
        coro.close()


@pytest.fixture
def restore_gc() -> Any:
    before = gc.get_threshold()
    gc.unfreeze()  # a clean start, whatever ran before in this process
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


async def test_a_started_server_freezes_start_up_and_raises_the_first_threshold(restore_gc: None) -> None:
    app = _App(Settings.load(env={"GC_GEN0_THRESHOLD": "12345", "GC_GEN2_THRESHOLD": "0"}))
    setup_gc(app)
    second, third = gc.get_threshold()[1:]
    for listener in app.listeners:
        await listener(app)
    assert gc.get_threshold() == (12345, second, third)  # GC_GEN2_THRESHOLD=0: Python's third
    assert gc.get_freeze_count() > 1000  # this process's modules, classes and functions


async def test_zero_keeps_pythons_collector(restore_gc: None) -> None:
    app = _App(Settings.load(env={"GC_GEN0_THRESHOLD": "0"}))
    setup_gc(app)
    before = gc.get_threshold()
    for listener in app.listeners:
        await listener(app)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_on_by_default(restore_gc: None) -> None:
    # Thousands of open connections made Python's defaults spend most of a reconnect storm in
    # full collections (app/gc_tuning.py): a server started with no setting is tuned.
    app = _App(Settings.load(env={}))
    setup_gc(app)
    for listener in app.listeners:
        await listener(app)
    assert gc.get_threshold()[0] == 10_000
    assert gc.get_threshold()[2] == 100  # full collections rarer, and run when calm instead
    assert gc.get_freeze_count() > 1000
    assert app.tasks == ["gc_calm_collect"]


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _old_cycle() -> "weakref.ref[_Cycle]":
    """A cycle that lived long enough to reach the oldest generation, then became garbage
    (a closed connection's objects), and enough young collections for a full one to be due."""
    obj = _Cycle()
    ref = weakref.ref(obj)
    for _ in range(12):  # each collection of generation 1 promotes into 2 and counts there
        gc.collect(1)
    del obj
    return ref


def test_a_calm_process_runs_the_due_full_collection(restore_gc: None) -> None:
    gc.disable()  # no automatic collection in between
    try:
        ref = _old_cycle()
        assert not calm_step(busy_share=0.9)  # busy: not now
        assert ref() is not None
        assert calm_step(busy_share=0.1)
        assert ref() is None
        assert not calm_step(busy_share=0.0)  # nothing due any more
    finally:
        gc.enable()
