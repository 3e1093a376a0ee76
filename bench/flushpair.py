"""Before/after pairs of the flush on one dataset: `python -m bench.flushpair MESSAGES VARIANT ...`

(docs/performance.md, "Flush throughput".) Injects MESSAGES over 100 rooms through the real
accept path once (bench.flushrun.inject), snapshots the private Redis (DUMP of every key),
then for each VARIANT in order: resets PostgreSQL (messages, dead_letters, rooms.last_seq)
and Redis (RESTORE), times app.flush's flush_all_pending (concurrency 4), checks the
result, and times one binary COPY (copy_records_to_table) of the same rows into a scratch
table shaped like `messages` (same indexes, no FK triggers) and into a bare heap: the two
ceilings, in the same run. Also the flush process's CPU and its PostgreSQL backends' CPU
per row (steadier than rows/s on a shared machine).

VARIANT: `new` (the working tree) or `before=<commit>` (that commit's app/flush/__init__.py
and write.py, imported as a package of their own), optionally `,gin_pending_list_limit=..`,
`,work_mem=..` (set on the scratch database), `,nogin` (the search index dropped for it) or
`,conc=N` (rooms flushed at once, default 4).
Run it pinned as the bench pins the flush: `taskset -c 1 python -m bench.flushpair ...`.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import asyncpg  # noqa: E402
import orjson  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench.stack import Stack  # noqa: E402
from bench.scenarios import _groups  # noqa: E402
from bench import flushrun  # noqa: E402

COLS = ("id", "room_id", "seq", "sender_id", "kind", "body", "file_id", "client_id", "created_at",
        "reply_to", "mentions")


async def snapshot(redis: Redis) -> list[tuple[bytes, int, bytes]]:
    out = []
    async for k in redis.scan_iter(count=1000):
        out.append((k, await redis.pttl(k), await redis.dump(k)))
    return out


async def restore(redis: Redis, snap: list[tuple[bytes, int, bytes]]) -> None:
    await redis.flushall()
    async with redis.pipeline(transaction=False) as p:
        for k, ttl, d in snap:
            p.restore(k, max(ttl, 0), d, replace=True)
        await p.execute()


async def ceiling(conn: asyncpg.Connection, records: list[tuple], indexes: bool) -> float:
    await conn.execute("DROP TABLE IF EXISTS copy_ceiling")
    like = "INCLUDING DEFAULTS INCLUDING INDEXES INCLUDING CONSTRAINTS" if indexes else "INCLUDING DEFAULTS"
    await conn.execute(f"CREATE TABLE copy_ceiling (LIKE messages {like})")
    await conn.execute("CHECKPOINT")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    c0, p0 = pg_cpu([pid]), time.process_time()
    t = time.perf_counter()
    await conn.copy_records_to_table("copy_ceiling", records=records, columns=COLS)
    s = time.perf_counter() - t
    print(f"  ceiling indexes={indexes}: {len(records) / s:,.0f} rows/s, pg {1e6 * (pg_cpu([pid]) - c0) / len(records):.2f} us/row,"
          f" py {1e6 * (time.process_time() - p0) / len(records):.2f} us/row", flush=True)
    await conn.execute("DROP TABLE copy_ceiling")
    return len(records) / s


def before_flush(commit: str) -> object:
    """app/flush of `commit` as a package of its own (its write.py imported from beside it)."""
    import importlib
    root = Path(__file__).resolve().parent.parent
    pkg = Path(tempfile.mkdtemp(prefix="flushpair_")) / ("flush_" + "".join(c if c.isalnum() else "_" for c in commit))
    pkg.mkdir()
    for name in ("__init__.py", "write.py"):
        src = subprocess.run(["git", "show", f"{commit}:app/flush/{name}"], cwd=root, check=True,
                             capture_output=True, text=True).stdout
        (pkg / name).write_text(src.replace("from app.flush.write import", f"from {pkg.name}.write import"))
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module(pkg.name)


def pg_cpu(pids: list[int]) -> float:
    tot = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rpartition(")")[2].split()
            tot += int(f[11]) + int(f[12])
        except OSError:
            pass
    return tot / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    total = int(sys.argv[1])
    variants = sys.argv[2:]
    stack = Stack(uuid.uuid4().hex[:8], "eflush")
    try:
        await stack.start()
        groups = _groups(200, 100)
        pop = await stack.populate(200, groups)
        stack.server.stop()
        stack.server = None
        from app.db import close_db, init_db
        from app.store.keys import Keys
        settings = stack.settings.replace(flush_backlog_threshold=2**62)
        keys = Keys(settings.redis_prefix)
        redis = Redis.from_url(settings.redis_url, decode_responses=True, max_connections=128)
        bredis = Redis.from_url(settings.redis_url, decode_responses=False)
        await init_db(settings.database_url, 4)
        cfg = {"rooms": pop.room_ids, "senders": [[pop.user_ids[u] for u in g] for g in groups],
               "messages": total, "body_bytes": 100, "inject_tasks": 64}
        t = time.perf_counter()
        await flushrun.inject(cfg, redis, keys, settings)
        print(f"injected {total} in {time.perf_counter() - t:.1f}s", flush=True)
        snap = await snapshot(bredis)
        await close_db()
        admin = await asyncpg.connect(settings.database_url)
        calls = flushrun.count_db_calls()
        records = None
        for spec in variants:
            v, *mods = spec.split(",")
            opts = dict(m.split("=") if "=" in m else (m, "1") for m in mods)
            await admin.execute(f'ALTER DATABASE "{stack.db_name}" RESET ALL')
            for guc in ("gin_pending_list_limit", "work_mem", "maintenance_work_mem"):
                if guc in opts:
                    await admin.execute(f"ALTER DATABASE \"{stack.db_name}\" SET {guc} = '{opts[guc]}'")
            if "nogin" in opts:
                await admin.execute("DROP INDEX IF EXISTS messages_body_fts")
            if v.startswith("before="):
                mod = before_flush(v.partition("=")[2])
            else:
                import app.flush as mod
            await admin.execute("TRUNCATE messages CASCADE; TRUNCATE dead_letters; UPDATE rooms SET last_seq = 0")
            await restore(bredis, snap)
            await admin.execute("CHECKPOINT")
            conc = int(opts.get("conc", 4))
            pool = await asyncpg.create_pool(settings.database_url, min_size=conc, max_size=conc)
            calls.clear()
            held = [await pool.acquire() for _ in range(conc)]
            pids = [await c.fetchval("SELECT pg_backend_pid()") for c in held]
            for c in held:
                await pool.release(c)
            pg0 = pg_cpu(pids)
            cpu0 = time.process_time()
            t = time.perf_counter()
            res = await mod.flush_all_pending(redis=redis, keys=keys, settings=settings, pool=pool, concurrency=conc)
            el = time.perf_counter() - t
            cpu = time.process_time() - cpu0
            pgcpu = pg_cpu(pids) - pg0
            n_calls = sum(calls.values())
            await pool.close()
            rows = await admin.fetchval("SELECT count(*) FROM messages")
            dup = await admin.fetchval("SELECT count(*) FROM (SELECT room_id, seq FROM messages GROUP BY 1,2 HAVING count(*)>1) d")
            gaps = await admin.fetchval("SELECT count(*) FROM (SELECT room_id FROM messages GROUP BY 1 HAVING max(seq)<>count(*) OR min(seq)<>1) g")
            left = await redis.scard(keys.pending_rooms())
            if records is None:
                records = [tuple(r) for r in await admin.fetch(f"SELECT {','.join(COLS)} FROM messages")]
                import gc
                gc.freeze()  # kept for every variant's ceiling: not walked by the collector meanwhile
            c_idx = await ceiling(admin, records, True)
            c_bare = await ceiling(admin, records, False)
            ok = rows == total and dup == 0 and gaps == 0 and left == 0
            batches = sum(r.batches for r in res)
            if "nogin" in opts:
                await admin.execute("CREATE INDEX IF NOT EXISTS messages_body_fts ON messages USING gin (to_tsvector('simple', body))")
            print(orjson.dumps({"variant": spec, "flush_rows_per_s": round(rows / el), "flush_s": round(el, 2),
                                "copy_indexed_rows_per_s": round(c_idx), "share_indexed": round(rows / el / c_idx, 3),
                                "copy_bare_rows_per_s": round(c_bare), "share_bare": round(rows / el / c_bare, 3),
                                "py_us_per_row": round(cpu / total * 1e6, 2), "pg_us_per_row": round(pgcpu / total * 1e6, 2),
                                "db_calls_per_batch": round(n_calls / max(1, batches), 2),
                                "ok": ok, "rows": rows, "dup": dup, "gaps": gaps, "left": left}).decode(),
                  flush=True)
        await admin.close()
        await redis.aclose()
        await bredis.aclose()
    finally:
        stack.close()


if __name__ == "__main__":
    import uvloop
    uvloop.run(main())
