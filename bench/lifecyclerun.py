"""The lifecycle microbenchmark's process: `python -m bench.lifecyclerun <config.json>` (started by the bench).

One send vs one reaction vs one mark-read, in-process, through the services the server
calls (`app.messages.accept_message`, `app.lifecycle.react`, `app.reads.mark_read`):
N sequential calls of each, after one warm-up call that loads the scripts and rebuilds the
room's member set and counters. For each kind: wall µs per call (p50/p99 and mean), this
process's CPU µs per call, Redis round trips per call (each write of a command buffer to a
Redis connection: a pipeline or a batch of EVALSHAs is one), Redis commands per call (the
private Redis server's INFO commandstats), and PostgreSQL queries during the N calls (every
asyncpg call counted; the spec's bar: 0 for a reaction on a cached message and for mark_read).
Prints JSON lines (`progress`, `result`) on stdout. Sequential on purpose: concurrency would
let the accept batcher share round trips, and the question is the cost of one call.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson

from bench.flushrun import count_db_calls, emit, redis_calls
from bench.stats import summarize


def count_round_trips() -> list[int]:
    """Count every buffer redis-py's asyncio connections send (one per round trip)."""
    import redis.asyncio.connection as rconn

    box = [0]
    original = rconn.AbstractConnection.send_packed_command

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        box[0] += 1
        return await original(self, *args, **kwargs)

    rconn.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    # The accept batcher writes its pipelined batch itself (app/store/cache.py _write_packed).
    from app.store import cache

    write_packed = cache._write_packed

    async def counted_batch(conn: Any, data: bytes) -> None:
        box[0] += 1
        await write_packed(conn, data)

    cache._write_packed = counted_batch  # type: ignore[assignment]
    return box


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def measure(name: str, n: int, call: Callable[[int], Awaitable[Any]], redis: Any,
                  trips: list[int], db: Any) -> dict[str, Any]:
    lat: list[int] = []
    db.clear()
    c0 = await redis_calls(redis)
    t0, cpu0, rt0 = time.perf_counter(), cpu_s(), trips[0]
    for i in range(n):
        t = time.perf_counter_ns()
        await call(i)
        lat.append((time.perf_counter_ns() - t) // 1000)
    wall, cpu, rts = time.perf_counter() - t0, cpu_s() - cpu0, trips[0] - rt0
    db_calls = dict(db)
    commands = await redis_calls(redis) - c0 - 1  # minus the INFO of the first reading
    emit("progress", msg=f"[lifecycle_micro] {name}: {wall / n * 1e6:.0f} us/call, "
                         f"{rts / n:.2f} Redis round trips/call, {sum(db_calls.values())} PostgreSQL queries")
    return {"calls": n, "wall_us_per_call": round(wall / n * 1e6, 1), "latency_us": summarize(lat, 1.0, 1),
            "cpu_us_per_call": round(cpu / n * 1e6, 1),
            "redis_round_trips_per_call": round(rts / n, 3), "redis_commands_per_call": round(commands / n, 3),
            "postgres_queries": sum(db_calls.values()), "postgres_queries_by_kind": db_calls}


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from redis.asyncio import Redis

    from app import lifecycle

    try:
        from app import reads
    except ImportError:  # the read-marker service has not landed: send and react only
        reads = None
    from app.db import close_db, init_db
    from app.messages import accept_message
    from app.resources import Resources
    from app.settings import Settings
    from app.store.keys import Keys

    settings = Settings.load(env={**os.environ, **cfg["env"]})
    # Nothing may be flushed or rate limited under the measurement.
    settings = settings.replace(flush_backlog_threshold=2**62)
    keys = Keys(settings.redis_prefix)
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    await init_db(settings.database_url, 4)
    res = Resources.build(settings, redis, keys)
    n = int(cfg["calls"])
    room, sender, reader, reader_name = cfg["room"], cfg["sender"], cfg["reader"], cfg["reader_name"]
    trips = count_round_trips()
    db = count_db_calls()
    try:
        # Warm-up: scripts loaded, member set and counters (seq, version) rebuilt, once each.
        first, _ = await accept_message(res, room_id=room, sender_id=sender, body="warm-up", rate_limit=False)
        await lifecycle.react(res, room_id=room, seq=first["seq"], user_id=reader, emoji="🔥", add=True)
        if reads is not None:
            await reads.mark_read(res, room_id=room, user_id=reader, username=reader_name, seq=first["seq"])
        base = first["seq"]
        pad = "x" * max(1, int(cfg.get("body_bytes", 100)) - 10)
        out: dict[str, Any] = {"calls": n}

        async def send(i: int) -> None:
            await accept_message(res, room_id=room, sender_id=sender, body=f"{i} {pad}", rate_limit=False)

        async def react(i: int) -> None:
            # a real change each time: a new (message, user, emoji) on a cached message
            await lifecycle.react(res, room_id=room, seq=base + 1 + i, user_id=reader, emoji="👍", add=True)

        async def mark(i: int) -> None:
            # the marker moves by one each time (a reader following the room)
            await reads.mark_read(res, room_id=room, user_id=reader, username=reader_name, seq=base + 1 + i)

        emit("progress", msg=f"[lifecycle_micro] {n} sequential calls each: send, react, mark_read")
        out["send"] = await measure("send", n, send, redis, trips, db)
        out["react"] = await measure("react", n, react, redis, trips, db)
        kinds = ["react"]
        if reads is not None:
            out["mark_read"] = await measure("mark_read", n, mark, redis, trips, db)
            kinds.append("mark_read")
        else:
            emit("progress", msg="[lifecycle_micro] app.reads is missing: mark_read not measured")
        for kind in kinds:
            out[f"{kind}_vs_send_wall"] = round(out[kind]["wall_us_per_call"] / out["send"]["wall_us_per_call"], 2)
            out[f"{kind}_vs_send_cpu"] = round(out[kind]["cpu_us_per_call"] / out["send"]["cpu_us_per_call"], 2)
        out["passed"] = all(out[k]["postgres_queries"] == 0 and out[k]["redis_round_trips_per_call"] <= 1.0
                            for k in kinds) and reads is not None
        return out
    finally:
        await res.close()
        await redis.aclose()
        await close_db()


def main() -> int:
    cfg = orjson.loads(Path(sys.argv[1]).read_bytes())
    try:
        import uvloop

        run_loop = uvloop.run
    except ImportError:
        run_loop = asyncio.run
    result = run_loop(run(cfg))
    emit("result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
