"""Operator commands: `python -m app.ops.cli <command>`.

  migrate          apply committed database migrations
  makemigrations   write a new migration from model changes (developers)
  flush            flush every pending room's cached messages to PostgreSQL now, and wait
  status           backlog per pending room, dead letters, and the job queues' depths
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any, Callable

from app.settings import Settings

COMMANDS: dict[str, tuple[str, Callable[[Settings, argparse.Namespace], int]]] = {}


def command(name: str, help_text: str) -> Callable:
    def register(fn: Callable[[Settings, argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = (help_text, fn)
        return fn
    return register


@command("migrate", "apply committed database migrations")
def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.db import migrate

    asyncio.run(migrate(settings.database_url))
    print("migrations applied")
    return 0


@command("makemigrations", "write a new migration from model changes")
def _makemigrations(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import subprocess
    import tempfile

    from app.db import tortoise_config

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(tortoise_config(settings.database_url, 2), fh)
    return subprocess.call([sys.executable, "-m", "tortoise", "--config-file", fh.name, "makemigrations"])


@command("flush", "flush every pending room to PostgreSQL now and wait until done")
def _flush(settings: Settings, args: argparse.Namespace) -> int:
    from app.db import close_db, init_db, ping_db, raw_pool
    from app.flush import check_redis_restart, flush_all_pending
    from app.store.keys import Keys
    from app.store.client import connect_redis_for

    async def run() -> int:
        await init_db(settings.database_url, settings.db_pool_max)
        redis = connect_redis_for(settings)  # a RedisCluster with REDIS_CLUSTER
        keys = Keys.from_settings(settings)
        try:
            await ping_db()
            # As the flush tick does: after a Redis restart, counters first (no seq reused meanwhile).
            await check_redis_restart(redis=redis, keys=keys, pool=raw_pool())
            results = await flush_all_pending(redis=redis, keys=keys, settings=settings, pool=raw_pool())
        finally:
            await redis.aclose()
            await close_db()
        for r in results:
            state = "done" if r.drained and not r.busy else ("busy (a worker holds it)" if r.busy else "more left")
            extra = (f"  dead_letters={r.skipped}" if r.skipped else "") + (f"  reseq={r.reseq}" if r.reseq else "")
            print(f"{r.room_id}  rows={r.rows}  ms={r.ms:.0f}  flushed={r.flushed}{extra}  {state}")
        left = [r for r in results if r.busy or not r.drained]
        print(f"{len(results)} rooms, {sum(r.rows for r in results)} messages flushed"
              + (f", {len(left)} not finished" if left else ""))
        return 1 if left else 0

    return asyncio.run(run())


@command("status", "backlog per pending room, dead letters and the job queues' depths")
def _status(settings: Settings, args: argparse.Namespace) -> int:
    from app.jobs import Producer, broker_url, is_rabbitmq, queues
    from app.store.keys import Keys
    from app.store.client import connect_redis, connect_redis_for
    from app.store.pending import pending_rooms

    keys = Keys.from_settings(settings)
    ns = keys.dramatiq_namespace()
    rabbitmq = is_rabbitmq(broker_url(settings))

    async def dead_letters() -> list[Any] | None:
        """(room, count, newest) of the entries the flush set aside; None if PostgreSQL is down."""
        import asyncpg

        try:
            conn = await asyncpg.connect(settings.database_url.replace("postgresql://", "postgres://", 1), timeout=5)
        except Exception as exc:  # noqa: BLE001 - status still shows what Redis knows
            print(f"dead letters: PostgreSQL unreachable ({exc})")
            return None
        try:
            return list(await conn.fetch("SELECT room_id, count(*) AS n, max(created_at) AS newest"
                                         " FROM dead_letters GROUP BY room_id ORDER BY n DESC"))
        finally:
            await conn.close()

    async def run() -> int:
        dead = await dead_letters()
        if dead is not None:
            print(f"dead letters: {sum(r['n'] for r in dead)} (cache entries the flush set aside; table dead_letters)")
            for r in dead[:20]:
                print(f"{r['n']:>9}  {r['room_id']}  newest {r['newest'].isoformat(timespec='seconds')}")
        redis = connect_redis_for(settings)
        try:
            rooms = sorted(await pending_rooms(redis, keys))  # every slot's set on a cluster
            rows = []
            for i in range(0, len(rooms), 500):
                chunk = rooms[i:i + 500]
                pipe = redis.pipeline(transaction=False)
                for room in chunk:
                    pipe.get(keys.room_seq(room))
                    pipe.get(keys.room_flushed(room))
                    pipe.xlen(keys.room_log(room))
                values = await pipe.execute()
                for j, room in enumerate(chunk):
                    seq, flushed, cached = values[3 * j:3 * j + 3]
                    rows.append((int(seq or 0) - int(flushed or 0), room, int(seq or 0), int(flushed or 0), cached))
        finally:
            await redis.aclose()
        if rabbitmq:
            # RabbitMQ does not count fetched (unacked) jobs: that column shows 0.
            producer = Producer(settings)
            try:
                counts = producer.queue_depths()
            finally:
                producer.close()
            depths = [n for q in queues() for n in (counts[q]["ready"], counts[q]["ready"],
                                                     counts[q]["delayed"], counts[q]["dead"])]
            where, workers = f"RabbitMQ {broker_url(settings).rsplit('@', 1)[-1]}", None
        else:
            broker = connect_redis(broker_url(settings))  # BROKER_URL: maybe another Redis
            try:
                pipe = broker.pipeline(transaction=False)
                for q in queues():
                    # <ns>:<q> lists ready job ids; <ns>:<q>.msgs holds ready + fetched (running) jobs;
                    # .DQ is the delay queue (retries), .XQ the dead letters.
                    pipe.llen(f"{ns}:{q}")
                    pipe.hlen(f"{ns}:{q}.msgs")
                    pipe.hlen(f"{ns}:{q}.DQ.msgs")
                    pipe.zcard(f"{ns}:{q}.XQ")
                depths = await pipe.execute()
                workers = await broker.zcard(f"{ns}:__heartbeats__")
            finally:
                await broker.aclose()
            where = f"namespace {ns}"
        rows.sort(reverse=True)
        print(f"pending rooms: {len(rows)}, unflushed messages: {sum(r[0] for r in rows)}")
        if rows:
            print(f"{'backlog':>9} {'seq':>9} {'flushed':>9} {'cached':>7}  room")
            for backlog, room, seq, flushed, cached in rows:
                print(f"{backlog:>9} {seq:>9} {flushed:>9} {cached:>7}  {room}")
        seen = "" if workers is None else f", {workers} live or recently seen workers"
        print(f"job queues ({where}{seen}):")
        print(f"{'ready':>7} {'fetched':>7} {'delayed':>7} {'dead':>7}  queue")
        for i, q in enumerate(queues()):
            ready, total, delayed, dead = depths[4 * i:4 * i + 4]
            print(f"{ready:>7} {max(total - ready, 0):>7} {delayed:>7} {dead:>7}  {q}")
        return 0

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ops.cli", description="chat server operator commands")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _fn) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load()
    return COMMANDS[args.command][1](settings, args)


if __name__ == "__main__":
    sys.exit(main())
