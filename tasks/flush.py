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
    """Flush one room until drained; idempotent, a no-op while another worker holds the room.

    Kept for the jobs queued before flush_rooms existed, and for tools that name one room."""
    res = resources()
    await flush.flush_room(room_id, redis=res.redis, keys=res.keys, settings=res.settings, pool=res.pool(),
                           fk=res.fk_skip)


class RoomsFailed(Exception):
    """Some rooms of a flush_rooms job failed (each logged); raised after all were tried."""


@dramatiq.actor(max_retries=3, min_backoff=1_000, max_backoff=30_000, time_limit=5 * 60_000)
async def flush_rooms(room_ids: list[str]) -> None:
    """Flush several rooms, one after another (the backlog trigger's and the tick's job).

    One job for many rooms: Dramatiq's fetch and ack, and the server's enqueue, are paid once
    (app/jobs.py Producer.trigger_flush). A room that fails does not stop the others: the job
    raises after trying them all, so Dramatiq retries it (a retry re-runs the rooms that
    worked too; flush_room is idempotent and a drained room costs a few round trips). The job
    as a whole keeps to one run's bound (app.flush.MAX_RUN_S): the rooms it has not started
    by then go out again as a new job, so one hot room cannot hold the others back for long.
    """
    res = resources()
    done = await flush.flush_rooms(room_ids, redis=res.redis, keys=res.keys, settings=res.settings,
                                   pool=res.pool(), fk=res.fk_skip)
    if done.left:
        await asyncio.get_running_loop().run_in_executor(None, flush_rooms.send, done.left)
        log.info("flush_rooms: %d rooms left for a new job", len(done.left))
    if done.failed:
        first = next(iter(done.failed.values()))
        raise RoomsFailed(f"{len(done.failed)} of {len(set(room_ids))} rooms failed: "
                          f"{', '.join(done.failed)}") from first


# No retries for scheduled actors: the next tick does the same work.
@dramatiq.actor(periodic=cron(settings.flush_cron), max_retries=0, time_limit=60_000)
async def flush_pending() -> None:
    """Enqueue flush_rooms jobs (FLUSH_JOB_ROOMS rooms each) for every room with unflushed
    messages (the pending set, never KEYS).

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
    todo, size = sorted(rooms), res.settings.flush_job_rooms
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    await loop.run_in_executor(None, lambda: [flush_rooms.send(chunk) for chunk in chunks])
    log.info("flush_pending: %d rooms enqueued in %d jobs", len(rooms), len(chunks))
