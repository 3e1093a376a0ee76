"""Flush actors: move cached messages to PostgreSQL (app/flush/__init__.py does the work)."""

from __future__ import annotations

import asyncio
import logging

import dramatiq
from periodiq import cron

from app import flush
from app.store import pending
from tasks.broker import resources, settings

log = logging.getLogger("chat.flush")


@dramatiq.actor(max_retries=3, min_backoff=1_000, max_backoff=30_000, time_limit=5 * 60_000)
async def flush_room(room_id: str) -> None:
    """Flush one room until drained; idempotent, a no-op while another worker holds the room."""
    res = resources()
    await flush.flush_room(room_id, redis=res.redis, keys=res.keys, settings=res.settings, pool=res.pool(),
                           fk=res.fk_skip)


# No retries for scheduled actors: the next tick does the same work.
@dramatiq.actor(periodic=cron(settings.flush_cron), max_retries=0, time_limit=60_000)
async def flush_pending() -> None:
    """Enqueue flush_room for every room with unflushed messages (the pending set, never KEYS).

    First, if Redis restarted or failed over since the last tick (its run_id changed), raise
    every room's counter to PostgreSQL's max seq, so new sends stop reusing seqs PostgreSQL holds.
    """
    res = resources()
    try:
        await flush.check_redis_restart(redis=res.redis, keys=res.keys, pool=res.pool())
    except Exception:  # noqa: BLE001 - the flush itself moves any orphan; retried next tick
        log.warning("flush_pending: checking Redis for a restart failed", exc_info=True)
    rooms = await pending.pending_rooms(res.redis, res.keys)  # every slot's set on a cluster
    if not rooms:
        return
    loop = asyncio.get_running_loop()
    # Broker sends are blocking Redis calls: keep them off the event loop other actors share.
    await loop.run_in_executor(None, lambda: [flush_room.send(room_id) for room_id in sorted(rooms)])
    log.info("flush_pending: %d rooms enqueued", len(rooms))
