"""The Dramatiq broker of the worker and the scheduler: imported before any actor.

Dramatiq binds actors to the global broker when they are declared, so this module builds
it (app.jobs.build_broker: Redis or RabbitMQ by BROKER_URL; namespace, heartbeat and
maintenance shared with the server's producer) and sets it at import time. Worker
processes open their resources once, at boot, on the AsyncIO middleware's event loop
thread, where every async actor runs: Tortoise (PostgreSQL) and the same Resources object the server builds (app/resources.py:
settings, keys, one async Redis client, the accept policy and pipeline). The scheduler
process never boots a worker and opens nothing.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
from typing import Any

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import AsyncIO, Middleware
from periodiq import PeriodiqMiddleware

from app.db import close_db, init_db, ping_db
from app.jobs import build_broker
from app.logs import json_everywhere
from app.ops.procs import die_with_parent
from app.resources import Resources
from app.settings import Settings
from app.store.client import connect_redis_for

log = logging.getLogger("chat.worker")


class _Stderr(io.TextIOBase):
    """The process's own fd 2, never raising: the pipe to a dead parent must not break a shutdown."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass
        return len(text)


def _orphaned(signum: int, frame: Any) -> None:
    """The `dramatiq` parent is gone (PR_SET_PDEATHSIG): stop as on SIGTERM, logging elsewhere.

    Dramatiq points this process's stdout, stderr and root log handler at a pipe its parent
    reads; with the parent dead a write there fails mid-shutdown, and the process was left
    with its worker threads running and no main loop, forever. Logs go to our own stderr
    (the file or pipe the parent's own output went to), then Dramatiq's SIGTERM handler runs.
    """
    safe = _Stderr()
    sys.stdout = sys.stderr = safe
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(safe)
    # Dramatiq's handler once; a second SIGTERM would take its "kill" path (SystemExit in the
    # main thread while the worker threads run on: the process never ends), so none follows.
    term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if callable(term):
        term(signal.SIGTERM, frame)


def lower_priority(nice: int) -> int:
    """Every thread of this process to niceness `nice` at least (WORKER_NICE); returns it.

    Linux keeps the nice value per thread and new threads inherit their creator's, so all the
    threads that exist now are reniced (the AsyncIO loop thread, where the flush runs and which
    starts the executor threads where Pillow converts images); later ones follow. Only ever
    raised: a process started niced stays so, and lowering needs privileges we don't ask for.
    """
    for tid in (int(t) for t in os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else (0,):
        try:
            current = os.getpriority(os.PRIO_PROCESS, tid)
            if nice > current:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # a thread that just ended; not Linux
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)


class FastEventLoop(Middleware):
    """The worker's event loop is uvloop's, as the server's (Sanic) is (WORKER_UVLOOP).

    Must come before AsyncIO: its before_worker_boot makes the loop with asyncio.new_event_loop,
    which asks the policy set here. A flush is a dozen Redis and PostgreSQL round trips, and the
    stdlib loop's transport calls showed in its profile; measured (bench stack at 1,000 msgs/s,
    10 s windows): the worker's CPU 1.34-1.37 s -> 1.31 s, about 3%, on the server's core.
    Only in booted workers: importing this module (the scheduler, tests) changes no policy.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        if not self.enabled:
            return
        try:
            import uvloop
        except ImportError:  # an install without it: the stdlib loop works the same, slower
            return
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class WorkerResources(Middleware):
    """Opens Tortoise and Redis on the event loop thread at worker boot, closes them at shutdown.

    Must come after AsyncIO in the middleware list: `before_*` hooks run in list order (the
    loop exists by then) and `after_*` hooks in reverse (we close before the loop stops).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: Resources | None = None

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        # A worker process whose `dramatiq` parent was SIGKILLed stops too (see _orphaned).
        signal.signal(signal.SIGUSR1, _orphaned)
        die_with_parent(signal.SIGUSR1)
        loop_thread = get_event_loop_thread()
        assert loop_thread is not None, "AsyncIO middleware must come first"
        # Before the worker threads start (they inherit it), the loop thread already running included.
        lower_priority(self.settings.worker_nice)
        self.current = loop_thread.run_coroutine(self._open())

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        loop_thread = get_event_loop_thread()
        if self.current is not None and loop_thread is not None:
            loop_thread.run_coroutine(self._close(self.current))
            self.current = None

    async def _open(self) -> Resources:
        s = self.settings
        await init_db(s.database_url, s.db_pool_max)
        await ping_db()  # opens the pool now: a wrong DATABASE_URL fails the boot, not every job
        res = Resources.build(s, connect_redis_for(s))  # a RedisCluster with REDIS_CLUSTER
        await res.redis.ping()
        await res.register_scripts()
        log.info("worker resources open (database, redis prefix %r)", s.redis_prefix)
        return res

    async def _close(self, res: Resources) -> None:
        await res.close()
        await res.redis.aclose()
        await close_db()


settings = Settings.load()
logging.getLogger("chat").setLevel(settings.log_level)
if settings.chat_log_format == "json":
    json_everywhere()  # the handlers dramatiq's and periodiq's CLIs set up before importing us
broker = build_broker(settings)
broker.add_middleware(FastEventLoop(settings.worker_uvloop))
broker.add_middleware(AsyncIO())
# A scheduled job still queued after skip_delay seconds is dropped: the next tick replaces it.
broker.add_middleware(PeriodiqMiddleware(skip_delay=30))
worker_resources = WorkerResources(settings)
broker.add_middleware(worker_resources)
dramatiq.set_broker(broker)


def resources() -> Resources:
    """The worker process's resources (only inside a booted worker)."""
    if worker_resources.current is None:
        raise RuntimeError("worker resources are not open (not inside a booted dramatiq worker)")
    return worker_resources.current
