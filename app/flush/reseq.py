"""Seqs after a Redis rollback: move orphans to new seqs, raise counters after a restart.

A Redis that comes back behind PostgreSQL (a host crash with `appendfsync everysec`, a
replica promoted late) hands out seqs PostgreSQL already holds. The flush finds such rows
(app/flush/write.py: a conflicting seq whose message id PostgreSQL does not hold) and, after
its commit, app/store/lua/reseq.lua gives them new seqs; the flush tick raises every room's counter as
soon as Redis's run_id changes, so new sends stop colliding."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
from redis.asyncio import Redis

from app.realtime import events
from app.flush.write import Written
from app.store import scripts
from app.store.client import primaries_info
from app.store.keys import Keys
from app.settings import Settings

log = logging.getLogger("chat.flush")

async def reseq(redis: Redis, keys: Keys, settings: Settings, room_id: str, records: list[tuple[Any, ...]],
                top: int, written: Written) -> list[tuple[int, int]]:
    """Move a committed batch's orphans to new seqs (lua/reseq.lua); [(old seq, new seq), ...].

    `records` are the batch's rows, `top` its highest seq: everything up to it is in
    PostgreSQL (or dead_letters) now, so the stream is trimmed up to it."""
    script_keys = [keys.room_log(room_id), keys.room_seq(room_id), keys.pending_set(room_id)]
    per: list[Any] = []
    for i in written.orphans:
        r = records[i]
        k = 0
        if r[7] is not None:
            script_keys.append(keys.room_client_id(room_id, r[3] or "-", r[7]))
            k = len(script_keys) - 3
        per += [int(r[2]), str(r[0]), k]
    resync = events.encode(events.room_route(room_id),
                           {"type": "resync", "room_id": room_id, "reason": "redis_rollback"})
    event_prefix, event_suffix = events.message_payload_parts(room_id)
    args = [max(written.floor, top), top + 1, room_id, keys.room_channel(room_id),
            settings.idempotency_ttl_s, resync, event_prefix, event_suffix, len(written.orphans), *per]
    flat = await scripts.RESEQ(redis, script_keys, args)
    moved = [(int(flat[j]), int(flat[j + 1])) for j in range(0, len(flat), 2)]
    for old, new in moved:
        log.warning("flush room=%s seq=%d: seq already taken in PostgreSQL by another message "
                    "(Redis rolled back); message moved to seq %d", room_id, old, new)
    return moved


# Rooms per SQL page and Redis pipeline when re-seeding after a Redis restart.
RESEED_PAGE = 1000
RESEED_SQL = """SELECT r.id,
  GREATEST(r.last_seq, COALESCE((SELECT MAX(seq) FROM messages m WHERE m.room_id = r.id), 0)) AS top
FROM rooms r WHERE r.id > $1 ORDER BY r.id LIMIT $2"""


async def check_redis_restart(*, redis: Redis, keys: Keys, pool: asyncpg.Pool) -> int | None:
    """After Redis restarted (new `run_id`), raise every room's counter to PostgreSQL's max.

    A Redis that comes back from an `appendfsync everysec` crash, or a promoted replica, may
    hold counters from before messages PostgreSQL already has; raising them at once keeps new
    sends off those seqs (a send that got one meanwhile is moved by the flush). `flushed` is
    never advanced here: entries Redis still holds are flushed, and orphans moved, as usual.
    Returns how many counters were raised, or None when Redis did not restart.
    On a cluster the "run id" is every primary's, sorted and joined: any primary restarted or
    promoted (or a node added) counts as a restart, conservatively (raising is idempotent).
    """
    infos = await primaries_info(redis, "server")
    ids = sorted(str(info.get("run_id", "")) for info in infos.values())
    run_id = ",".join(ids) if all(ids) else ""
    if not run_id or await redis.get(keys.redis_run_id()) == run_id:
        return None
    await scripts.RAISE_SEQ.load(redis)  # queued on pipelines below, which cannot reload it
    raised, after = 0, uuid.UUID(int=0)
    while True:
        rows = await pool.fetch(RESEED_SQL, after, RESEED_PAGE)
        if not rows:
            break
        after = rows[-1]["id"]
        async with redis.pipeline(transaction=False) as pipe:
            todo = [r for r in rows if r["top"] > 0]
            for r in todo:
                rid = str(r["id"])
                scripts.RAISE_SEQ.queue(pipe, [keys.room_seq(rid), keys.room_log(rid), keys.room_flushed(rid)],
                                        [int(r["top"])])
            results = await pipe.execute() if todo else []
        raised += sum(1 for x in results if x == 1)
        if len(rows) < RESEED_PAGE:
            break
    await redis.set(keys.redis_run_id(), run_id)
    log.warning("Redis run_id changed (restart or failover): %d room counters raised to PostgreSQL's max seq",
                raised)
    return raised
