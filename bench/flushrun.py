"""The flush scenario's worker process: `python -m bench.flushrun <config.json>` (started by the bench).

1. Accepts K messages through the real accept path (`app.messages.accept_message`, the
   same code WebSocket and HTTP sends use), spread over the rooms' members, with the
   backlog trigger disabled so nothing is flushed early.
2. Times the worker's flush service (`app.flush.flush_all_pending`) moving them all into
   PostgreSQL, counting database calls (each asyncpg call is one round trip) and Redis
   commands (from the private Redis server's INFO commandstats).
3. Checks the result: every message in PostgreSQL exactly once, nothing left pending.
Prints JSON lines (`progress`, `result`) on stdout.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

COUNTED = ("execute", "executemany", "fetch", "fetchrow", "fetchval", "copy_records_to_table",
           "copy_to_table", "copy_from_table", "copy_from_query")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def count_db_calls() -> Counter[str]:
    """Wrap asyncpg's Connection methods so every database call is counted."""
    import asyncpg.connection

    calls: Counter[str] = Counter()
    cls = asyncpg.connection.Connection
    for name in COUNTED:
        original = getattr(cls, name)

        def wrap(fn: Any, label: str) -> Any:
            async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls[label] += 1
                return await fn(self, *args, **kwargs)
            return counted

        setattr(cls, name, wrap(original, name))
    return calls


async def redis_calls(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


class PipelinedRedis:
    """A Redis client whose EVALSHA calls are queued and sent in pipelines of many.

    `accept_message` runs unchanged (the real accept path and its Lua script); only its
    one round trip per message is batched with other concurrent sends, as a busy server
    would. Every other command goes straight to the real client.
    """

    def __init__(self, redis: Any, batch: int = 500) -> None:
        self._redis = redis
        self._batch = batch
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._kick = asyncio.Event()
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def evalsha(self, *args: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((args, fut))
        self._kick.set()
        return await fut

    async def pump(self) -> None:
        while not self._closed or self._queue:
            await self._kick.wait()
            self._kick.clear()
            await asyncio.sleep(0)  # let every runnable sender queue its call first
            while self._queue:
                batch, self._queue = self._queue[:self._batch], self._queue[self._batch:]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for args, _ in batch:
                        pipe.evalsha(*args)
                    try:
                        replies = await pipe.execute(raise_on_error=False)
                    except Exception as exc:  # noqa: BLE001 - hand the failure to every caller
                        replies = [exc] * len(batch)
                for (_, fut), reply in zip(batch, replies):
                    if isinstance(reply, Exception):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)

    def close(self) -> None:
        self._closed = True
        self._kick.set()


async def inject(cfg: dict[str, Any], redis: Any, keys: Any, settings: Any) -> float:
    """Accept every message through app.messages.accept_message, pipelined; returns seconds."""
    from redis.exceptions import NoScriptError

    from app.messages import accept_message
    from app.resources import Resources

    res = Resources.build(settings, redis, keys)  # its batcher pipelines the concurrent sends
    rooms, senders, total = cfg["rooms"], cfg["senders"], int(cfg["messages"])
    pad = "x" * max(1, int(cfg.get("body_bytes", 100)) - 20)
    piped = PipelinedRedis(redis)
    pump = asyncio.ensure_future(piped.pump())
    next_k = 1  # message 0 is the plain first send below
    done = 1

    async def worker() -> None:
        nonlocal next_k, done
        while next_k < total:
            k = next_k
            next_k += 1
            r = k % len(rooms)
            args = dict(room_id=rooms[r], sender_id=senders[r][k % len(senders[r])], body=f"{k} {pad}",
                        rate_limit=False)
            try:
                await accept_message(res, **args)
            except NoScriptError:  # first calls of a pipeline before the script was loaded
                await accept_message(res, **args)
            done += 1
            if done % 100_000 == 0:
                emit("progress", msg=f"accepted {done}/{total}")

    t = time.perf_counter()
    try:
        # Load the script once through the normal path, then pipeline.
        await worker_one(res, rooms[0], senders[0][0], pad)
        await asyncio.gather(*(worker() for _ in range(int(cfg.get("inject_tasks", 1000)))))
    finally:
        piped.close()
        await pump
        await res.close()
    return time.perf_counter() - t


async def worker_one(res: Any, room_id: str, sender_id: str, pad: str) -> None:
    """One plain send first: it loads the accept script into Redis (EVALSHA needs it there)."""
    from app.messages import accept_message

    await accept_message(res, room_id=room_id, sender_id=sender_id, body=f"0 {pad}", rate_limit=False)


async def copy_ceiling(pool: Any, room_id: str, sender_id: str, rows: int, body_bytes: int,
                       workdir: Path) -> dict[str, Any]:
    """One COPY of `rows` rows into `messages` on the same database: the flush's ceiling here.

    The rows are made by PostgreSQL and written to a binary COPY file first (not timed), so the
    timed part is the COPY alone, with no Python per row: what a flush could reach at most.
    Same table, indexes and triggers as the flush's rows (seqs far above the flushed ones)."""
    path = workdir / "copy-ceiling.bin"
    cols = "id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE TEMP TABLE ceiling_src AS SELECT {cols} FROM messages LIMIT 0")
        await conn.execute(
            f"INSERT INTO ceiling_src ({cols}) SELECT gen_random_uuid(), $1, 1000000000 + g, $2, 'text', "
            "g || ' ' || repeat('x', $3), NULL, NULL, now() FROM generate_series(1, $4) g",
            room_id, sender_id, max(1, body_bytes - 8), rows)
        await conn.copy_from_query(f"SELECT {cols} FROM ceiling_src", output=str(path), format="binary")
        await conn.execute("DROP TABLE ceiling_src")
        # The flush skips the FK triggers where the role may (app/flush/write.py): the same here,
        # so both do the same work per row (indexes, the search index included).
        try:
            await conn.execute("SET session_replication_role = replica")
            triggers = "skipped (session_replication_role = replica, as the flush)"
        except Exception:  # noqa: BLE001 - a role without the privilege: the triggers fire, said so
            triggers = "fired (the role may not skip them)"
        t = time.perf_counter()
        await conn.copy_to_table("messages", source=str(path), columns=cols.split(", "), format="binary")
        elapsed = time.perf_counter() - t
        await conn.execute("RESET session_replication_role")
    size = path.stat().st_size
    path.unlink(missing_ok=True)
    return {"rows": rows, "seconds": round(elapsed, 3), "rows_per_s": round(rows / elapsed, 1),
            "file_mb": round(size / 2**20, 1), "fk_triggers": triggers}


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    import asyncpg
    from redis.asyncio import Redis

    from app.db import close_db, init_db
    from app.flush import flush_all_pending
    from app.store.keys import Keys
    from app.settings import Settings

    settings = Settings.load(env={**os.environ, **cfg["env"]})
    # No backlog trigger: the messages must wait in the cache for the timed flush.
    settings = settings.replace(flush_backlog_threshold=2**62)
    keys = Keys(settings.redis_prefix)
    redis = Redis.from_url(settings.redis_url, decode_responses=True, max_connections=128)
    await init_db(settings.database_url, 4)  # the accept path rebuilds lost sets from PostgreSQL
    total = int(cfg["messages"])
    try:
        emit("progress", msg=f"[flush] accepting {total} messages into the cache of {len(cfg['rooms'])} rooms")
        inject_s = await inject(cfg, redis, keys, settings)
        pending = await redis.scard(keys.pending_rooms())
        emit("progress", msg=f"[flush] accepted in {inject_s:.1f}s ({total / inject_s:,.0f}/s); "
                             f"flushing {pending} rooms with concurrency {cfg['concurrency']}")
        calls = count_db_calls()
        conc = int(cfg["concurrency"])
        pool = await asyncpg.create_pool(settings.database_url, min_size=conc, max_size=conc)
        try:
            async with pool.acquire() as conn:
                before_rows = await conn.fetchval("SELECT count(*) FROM messages")
            calls.clear()
            r0 = await redis_calls(redis)
            t = time.perf_counter()
            results = await flush_all_pending(redis=redis, keys=keys, settings=settings, pool=pool,
                                              concurrency=conc)
            elapsed = time.perf_counter() - t
            r1 = await redis_calls(redis)
            db_calls = dict(calls)
            async with pool.acquire() as conn:
                rows = await conn.fetchval("SELECT count(*) FROM messages") - before_rows
                dup = await conn.fetchval(
                    "SELECT count(*) FROM (SELECT room_id, seq FROM messages GROUP BY 1, 2 HAVING count(*) > 1) d")
                gaps = await conn.fetchval(
                    "SELECT count(*) FROM (SELECT room_id FROM messages GROUP BY 1"
                    " HAVING max(seq) <> count(*) OR min(seq) <> 1) g")
            ceiling = None
            if int(cfg.get("copy_rows", 0)) > 0:
                emit("progress", msg=f"[flush] flushed {rows} rows in {elapsed:.1f}s ({rows / elapsed:,.0f}/s); "
                                     f"the COPY ceiling: one COPY of {int(cfg['copy_rows']):,} rows")
                ceiling = await copy_ceiling(pool, cfg["rooms"][0], cfg["senders"][0][0], int(cfg["copy_rows"]),
                                             int(cfg.get("body_bytes", 100)), Path(cfg["workdir"]))
                emit("progress", msg=f"[flush] COPY ceiling {ceiling['rows_per_s']:,.0f} rows/s")
        finally:
            await pool.close()
        left = await redis.scard(keys.pending_rooms())
        batches = sum(r.batches for r in results)
        n_db = sum(db_calls.values())
        return {
            "messages": total, "rooms": len(cfg["rooms"]), "concurrency": conc,
            "batch_size": settings.flush_batch_size, "accept_s": round(inject_s, 2),
            "accept_per_s": round(total / inject_s, 1), "flush_s": round(elapsed, 3),
            "rows_written": rows, "rows_per_s": round(rows / elapsed, 1), "batches": batches,
            "db_calls": n_db, "db_calls_by_kind": db_calls,
            "db_calls_per_batch": round(n_db / max(1, batches), 2),
            "redis_commands": r1 - r0 - 1, "redis_commands_per_batch": round((r1 - r0 - 1) / max(1, batches), 2),
            "duplicates": dup, "rooms_with_gaps": gaps, "lost": total - rows, "rooms_left_pending": left,
            "passed": rows == total and dup == 0 and gaps == 0 and left == 0,
            "copy_ceiling": ceiling,
            "share_of_copy_ceiling": round(rows / elapsed / ceiling["rows_per_s"], 3) if ceiling else None,
        }
    finally:
        await redis.aclose()
        await close_db()


def main() -> int:
    cfg = orjson.loads(Path(sys.argv[1]).read_bytes())
    try:
        import uvloop

        run_loop = uvloop.run
    except ImportError:  # still works; the result names the loop that ran
        run_loop = asyncio.run
    result = run_loop(run(cfg))
    emit("result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
