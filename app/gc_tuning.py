"""The cyclic garbage collector of a server process (issue 14 item 3, docs/performance.md).

Measured in a server at 1,000 msgs/s with Python's defaults (gen0 threshold 700): the
collector took 5-6% of the process's CPU, and each full collection walked some 200,000
objects (~0.08 s, a pause every live connection sees), half of them the modules, classes and
functions loaded at start-up that never become garbage. So, once the server has started:
- `gc.freeze()` after one collection moves what start-up left into the permanent generation,
  which no collection walks again (what is garbage at that point is collected first);
- the first generation is collected after GC_GEN0_THRESHOLD net allocations instead of 700:
  the many short-lived containers of a message mostly die by reference counting before a
  collection would have walked them, and the older generations are reached as rarely.
That matters most with many connections open: each holds a few hundred tracked objects for as
long as it lives, and during a connect storm the set-ups in flight survive the young
collections, count as new long-lived objects and trigger full collections that walk every
open connection (5,000 clients reconnecting: 17 full collections of ~1 s each with Python's
defaults, 21.6 s of the server's 31.3 s of CPU in the collector; with 10,000: 2.5 s of 16.8 s).
Full collections are rarer still (GC_GEN2_THRESHOLD, 100 young-generation collections between
two instead of 10) and run when the process is calm (collect_when_calm): a closed connection's
objects are old, so only a full collection frees them, and doing that in the middle of a storm
cost 8% of its CPU per reconnect (10,000 clients: 0.886 -> 0.816 ms, storm 10.45 -> 9.74 s, two
pairs).
A frozen object that later becomes cyclic garbage is never collected: start-up objects
live as long as the process (app, blueprints, pools), so that is at most a replaced Redis
connection or two. GC_GEN0_THRESHOLD=0 keeps Python's defaults (no freeze). Only a started
server is touched (a listener): building an app in a test process changes nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

log = logging.getLogger("chat.server")

CALM_SHARE = 0.5  # a process using less of its core than this over the last interval is calm
DEFAULT_FULL_EVERY = 10  # young-generation collections between full ones in Python's defaults


def setup_gc(app: Any) -> None:
    @app.after_server_start
    async def _tune_gc(app: Any) -> None:
        settings = app.ctx.settings
        threshold = settings.gc_gen0_threshold
        if not threshold:
            return
        gc.collect()  # start-up's garbage goes now, not into the permanent generation
        gc.freeze()
        _, second, third = gc.get_threshold()
        gc.set_threshold(threshold, second, settings.gc_gen2_threshold or third)
        log.debug("gc: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
        if settings.gc_calm_collect_s:
            app.add_task(collect_when_calm(settings.gc_calm_collect_s), name="gc_calm_collect")


def calm_step(busy_share: float, due: int = DEFAULT_FULL_EVERY) -> bool:
    """One look of collect_when_calm: a full collection now, if one is due (as many young
    collections since the last full one as Python's defaults would allow) and the process was
    calm over the last interval. True when it collected."""
    if busy_share >= CALM_SHARE or gc.get_count()[2] < due:
        return False
    started = time.perf_counter()
    found = gc.collect()
    log.debug("gc: calm full collection, %d unreachable, %.3f s", found, time.perf_counter() - started)
    return True


async def collect_when_calm(interval_s: float) -> None:
    """Full collections in calm moments instead of in the middle of a storm.

    A closed connection's objects are old (they lived as long as it did), so only a full
    collection frees them; with GC_GEN2_THRESHOLD raised, Python runs one far less often, and
    after a storm of reconnects the old connections' cycles (about 50 objects each) would wait
    for it. Every `interval_s` this looks at the process's CPU over the interval and collects
    when one is due and the process is calm, so their memory comes back within seconds of the
    storm, with the pause where few are waiting."""
    cpu, wall = time.process_time(), time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        now_cpu, now_wall = time.process_time(), time.monotonic()
        busy = (now_cpu - cpu) / max(now_wall - wall, 1e-6)
        calm_step(busy)
        cpu, wall = time.process_time(), time.monotonic()
