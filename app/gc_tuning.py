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
A frozen object that later becomes cyclic garbage is never collected: start-up objects
live as long as the process (app, blueprints, pools), so that is at most a replaced Redis
connection or two. GC_GEN0_THRESHOLD=0 keeps Python's defaults (no freeze). Only a started
server is touched (a listener): building an app in a test process changes nothing.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

log = logging.getLogger("chat.server")


def setup_gc(app: Any) -> None:
    @app.after_server_start
    async def _tune_gc(app: Any) -> None:
        threshold = app.ctx.settings.gc_gen0_threshold
        if not threshold:
            return
        gc.collect()  # start-up's garbage goes now, not into the permanent generation
        gc.freeze()
        _, second, third = gc.get_threshold()
        gc.set_threshold(threshold, second, third)
        log.debug("gc: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
