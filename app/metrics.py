"""Prometheus metrics: what the processes count, and what a scrape reads from Redis and PostgreSQL.

Counted where it happens (prometheus-client counters, one set per process):
  chat_messages_accepted_total{result=new|duplicate}   sends accepted (a retried client_id: duplicate)
  chat_messages_rejected_total{reason=<error code>}     sends refused, by the API's error code
  chat_backend_errors_total{service=redis|postgres|unknown}   503s from a backing service (app/errors.py)
  chat_flushed_rows_total                              messages the worker's flush moved to PostgreSQL
                                                       (rate() of it is the flush's rows/s)
  chat_ws_connections                                  open WebSocket connections (summed over processes)
  chat_fanout_lag_seconds                              a message's accept to its dispatch in a server
                                                       process (histogram, sampled once a second)
Read at scrape time by the scraping process (one Redis pipeline and one cached query):
  chat_unflushed_rooms, chat_unflushed_messages, chat_unflushed_oldest_seconds   the flush backlog
  chat_dead_letters                                    rows in dead_letters (cached METRICS_DEAD_LETTERS_CACHE_S)
  chat_job_queue_depth{queue, state=ready|delayed|dead}   the job broker's queues (Redis or RabbitMQ)
  chat_backend_up{service}, chat_backend_ping_seconds{service}   Redis and PostgreSQL, as the scrape saw them

Multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set (before prometheus_client is imported;
`make run` and a server with WORKERS>1 set it), every process writes its counters to files
there and a scrape sums them (prometheus_client.multiprocess), so one scrape of any Sanic
worker covers all of them and the Dramatiq worker running on the same directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Iterable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from app.counters import (BACKEND_ERRORS, FANOUT_LAG, FLUSHED_ROWS, MESSAGES_ACCEPTED,  # noqa: F401
                          MESSAGES_REJECTED, WS_CONNECTIONS, count_backend_error)
from app.errors import ChatError, backing_service_error
from app.realtime.events import MESSAGE_HEAD

log = logging.getLogger("chat.metrics")

# The counters live in app/counters.py (app.errors counts there; it must not import this module).
WS_GAUGE_INTERVAL_S = 2.0  # how stale chat_ws_connections may be (each process sets its own)
PING_TIMEOUT_S = 2.0
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir(settings: Any) -> str | None:
    """The directory of multiprocess mode, or None. prometheus-client reads the variable itself
    at import; Settings reads the same one, so both agree."""
    return settings.prometheus_multiproc_dir or None


def count_rejected(exc: BaseException) -> None:
    """A send failed with `exc`: count it under the code the client is told."""
    # Not to_chat_error: that one counts backend errors, and the caller's handler calls it too.
    if isinstance(exc, ChatError):
        code = exc.code
    else:
        code = getattr(backing_service_error(exc), "code", "internal_error")
    MESSAGES_REJECTED.labels(code).inc()


# Bound once: labels() takes a lock and a dict lookup, and every send passes here.
_ACCEPTED_NEW = MESSAGES_ACCEPTED.labels("new")
_ACCEPTED_DUPLICATE = MESSAGES_ACCEPTED.labels("duplicate")


def counted_accept(fn: Any) -> Any:
    """Wrap app.messages.accept_message: every send over HTTP, WebSocket or an upload passes it."""
    import functools

    @functools.wraps(fn)
    async def accept(*args: Any, **kwargs: Any) -> Any:
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            count_rejected(exc)
            raise
        (_ACCEPTED_NEW if result[1] else _ACCEPTED_DUPLICATE).inc()
        return result

    return accept


class LagSampler:
    """chat_fanout_lag_seconds from the events a process dispatches, at most once per interval:
    one clock read per event, and the created_at of a message event parsed once a second.
    The accepting server's clock against this one's (NTP keeps hosts within milliseconds)."""

    _KEY = '"created_at":"'

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._next = 0.0

    def sample(self, payload: str) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        route, _, rest = payload.partition("|")
        frame = rest.partition("|")[2]
        if not route.startswith("r:") or not frame.startswith(MESSAGE_HEAD):
            return  # only new messages: an edit's event carries the original's created_at
        start = frame.find(self._KEY)
        if start < 0:
            return
        start += len(self._KEY)
        age = _iso_age(frame[start:frame.find('"', start)], time.time())
        if age is not None:
            self._next = now + self.interval_s
            FANOUT_LAG.observe(age)


FANOUT_SAMPLER = LagSampler()  # one per process: the fan-out loop feeds it every event


def mark_dead(settings: Any, pid: int | None = None) -> None:
    """In multiprocess mode, drop this process's live gauges (its connections are gone)."""
    path = multiprocess_dir(settings)
    if path:
        multiprocess.mark_process_dead(pid or os.getpid(), path)


# -- what a scrape reads ------------------------------------------------------------------

class _Snapshot:
    """Metric families computed before rendering (the collectors' API is synchronous)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class _Default:
    """The process's own registry (single-process mode) inside a per-scrape registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=list(labels or ()))
    fam.add_metric(list((labels or {}).values()), value)
    return fam


class DeadLetterCount:
    """SELECT count(*) FROM dead_letters, at most once per `ttl_s` (a scrape every few seconds
    must not scan a large table every time)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._at = -1e18
        self._value: int | None = None

    async def get(self, pool: Any) -> int:
        if time.monotonic() - self._at >= self.ttl_s or self._value is None:
            async with pool.acquire() as conn:
                self._value = int(await conn.fetchval("SELECT count(*) FROM dead_letters"))
            self._at = time.monotonic()
        return self._value


def _iso_age(created_at: str | None, now: float) -> float | None:
    from datetime import datetime

    if not created_at:
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


async def backlog(redis: Any, keys: Any, max_rooms: int) -> tuple[int, int, float]:
    """(pending rooms, unflushed messages, age in seconds of the oldest unflushed one).

    Messages and age cover at most `max_rooms` pending rooms (an SSCAN's first ones): a lower
    bound beyond that, and the scrape stays bounded. Per room: seq - flushed, and the first
    log entry after `flushed` (stream ids are `<seq>-0`) for its created_at.
    On a cluster the pending sets are one per slot (app/store/pending.py): their sizes are one
    pipelined SCARD each, the rooms come from the non-empty ones in slot order."""
    from app.store.pending import pending_counts

    counts = await pending_counts(redis, keys)
    total = sum(counts.values())
    rooms: list[str] = []
    for pending in counts:
        cursor: Any = 0
        while len(rooms) < max_rooms:
            cursor, chunk = await redis.sscan(pending, cursor, count=min(500, max_rooms))
            rooms.extend(r.decode() if isinstance(r, bytes) else r for r in chunk)
            if not cursor or int(cursor) == 0:
                break
        if len(rooms) >= max_rooms:
            break
    rooms = rooms[:max_rooms]
    messages = 0
    oldest = 0.0
    now = time.time()
    for i in range(0, len(rooms), 500):
        chunk = rooms[i:i + 500]
        pipe = redis.pipeline(transaction=False)
        for room in chunk:
            pipe.get(keys.room_seq(room))
            pipe.get(keys.room_flushed(room))
        values = await pipe.execute()
        pipe = redis.pipeline(transaction=False)
        behind = []
        for j, room in enumerate(chunk):
            seq, flushed = int(values[2 * j] or 0), int(values[2 * j + 1] or 0)
            if seq > flushed:
                messages += seq - flushed
                behind.append(room)
                pipe.xrange(keys.room_log(room), f"{flushed + 1}-0", "+", count=1)
        if behind:
            for entries in await pipe.execute():
                if not entries:
                    continue
                fields = entries[0][1]
                raw = fields.get(b"m", fields.get("m"))
                try:
                    created = orjson.loads(raw).get("created_at") if raw else None
                except orjson.JSONDecodeError:
                    created = None
                age = _iso_age(created, now)
                if age is not None:
                    oldest = max(oldest, age)
    return total, messages, oldest


async def _timed(coro: Any) -> float:
    started = time.perf_counter()
    await asyncio.wait_for(coro, PING_TIMEOUT_S)
    return time.perf_counter() - started


async def scrape_families(app: Any) -> list[Metric]:
    """The scrape-time metrics; a service that fails is `chat_backend_up 0` and its gauges are left out."""
    from app.db import ping_db

    res = app.ctx.resources
    settings = res.settings
    fams: list[Metric] = []
    up = GaugeMetricFamily("chat_backend_up", "Whether the scrape reached the service", labels=["service"])
    ping = GaugeMetricFamily("chat_backend_ping_seconds", "Round trip of one PING/SELECT 1 at scrape time",
                             labels=["service"])
    try:
        ping.add_metric(["redis"], await _timed(res.redis.ping()))
        total, messages, oldest = await asyncio.wait_for(
            backlog(res.redis, res.keys, settings.metrics_backlog_rooms), PING_TIMEOUT_S * 2)
        fams += [_gauge("chat_unflushed_rooms", "Rooms with messages not yet in PostgreSQL", total),
                 _gauge("chat_unflushed_messages", "Messages acknowledged but not yet in PostgreSQL "
                        "(over at most METRICS_BACKLOG_ROOMS rooms)", messages),
                 _gauge("chat_unflushed_oldest_seconds", "Age of the oldest message not yet in PostgreSQL", oldest)]
        up.add_metric(["redis"], 1)
    except Exception as exc:  # noqa: BLE001 - a scrape reports a broken service, it does not fail
        log.warning("metrics: Redis unreachable at scrape (%r)", exc)
        up.add_metric(["redis"], 0)
    try:
        ping.add_metric(["postgres"], await _timed(ping_db()))
        dead = app.ctx.__dict__.setdefault("dead_letter_count", DeadLetterCount(settings.metrics_dead_letters_cache_s))
        fams.append(_gauge("chat_dead_letters", "Cache entries the flush set aside (table dead_letters)",
                           await asyncio.wait_for(dead.get(res.pool()), PING_TIMEOUT_S)))
        up.add_metric(["postgres"], 1)
    except Exception as exc:  # noqa: BLE001
        log.warning("metrics: PostgreSQL unreachable at scrape (%r)", exc)
        up.add_metric(["postgres"], 0)
    try:
        loop = asyncio.get_running_loop()
        depths = await asyncio.wait_for(loop.run_in_executor(None, res.jobs.queue_depths), PING_TIMEOUT_S * 2)
        depth = GaugeMetricFamily("chat_job_queue_depth", "Jobs in the broker's queues", labels=["queue", "state"])
        for queue, counts in depths.items():
            for state, n in counts.items():
                depth.add_metric([queue, state], n)
        fams.append(depth)
        up.add_metric(["broker"], 1)
    except Exception as exc:  # noqa: BLE001
        log.warning("metrics: job broker unreachable at scrape (%r)", exc)
        up.add_metric(["broker"], 0)
    return [up, ping, *fams]


async def render(app: Any) -> bytes:
    """The whole exposition: every process's counters (multiprocess) or this one's, plus the scrape's."""
    WS_CONNECTIONS.set(_local_connections(app))  # this process's, fresh
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir(app.ctx.settings)
    if path:
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_Default())
    registry.register(_Snapshot(await scrape_families(app)))
    return generate_latest(registry)


# -- server wiring ------------------------------------------------------------------------

def _local_connections(app: Any) -> int:
    registry = getattr(app.ctx, "registry", None)
    return len(registry.conns) if registry is not None else 0


async def _ws_gauge_forever(app: Any) -> None:
    while True:
        WS_CONNECTIONS.set(_local_connections(app))
        await asyncio.sleep(WS_GAUGE_INTERVAL_S)


def setup_metrics(app: Any) -> None:
    """The request ids, JSON logs for Sanic's loggers, the per-process WS gauge (blueprints.metrics
    adds the route)."""
    from app.logs import configure_logging, setup_request_ids

    settings = app.ctx.settings
    configure_logging(settings.log_level, settings.chat_log_format)  # after Sanic's dictConfig
    setup_request_ids(app)

    @app.after_server_start
    async def _start_ws_gauge(app: Any) -> None:
        app.ctx.ws_gauge_task = asyncio.create_task(_ws_gauge_forever(app))

    @app.before_server_stop
    async def _stop_ws_gauge(app: Any) -> None:
        task = getattr(app.ctx, "ws_gauge_task", None)
        if task is not None:
            task.cancel()
        WS_CONNECTIONS.set(0)
        mark_dead(app.ctx.settings)
