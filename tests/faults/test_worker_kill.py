"""kill -9 the worker in the middle of flushing 100,000 messages in 50 rooms, then restart it:
PostgreSQL ends up with every acknowledged message exactly once."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.jobs import enqueue_sync
from tests.faults._kit import Clock, fill, inproc, pg_count, pg_messages, report, users_and_rooms, verdict

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 50
PER_ROOM = 2_000
BATCH = 100  # 20 batches per room: the kill lands between commits of a running flush


@pytest.mark.timeout(240)
async def test_worker_killed_mid_flush_loses_and_duplicates_nothing(stack) -> None:
    clock = Clock()
    server, base = stack.server()
    users, rooms = users_and_rooms(base, ROOMS)
    room_ids = [r["id"] for r in rooms]
    # The in-process sender must not queue flushes itself: the test decides when the worker runs.
    settings = stack.settings(FLUSH_BACKLOG_THRESHOLD=str(10**9))
    async with inproc(settings) as ip:
        t = time.monotonic()
        ledger = await fill(ip, room_ids, users[0].id, PER_ROOM)
        fill_s = time.monotonic() - t
        assert len(ledger.acked) == ROOMS * PER_ROOM
        assert await ip.redis.scard(ip.keys.pending_rooms()) == ROOMS
        assert await pg_count(settings.database_url) == 0
        # What the scheduler's tick does: one flush_room job per pending room.
        for room_id in room_ids:
            enqueue_sync(settings, "flush_room", room_id)

        worker = stack.worker(wait=False, FLUSH_BATCH_SIZE=str(BATCH))
        # Kill once a good part, but far from all, is committed.
        t_start = time.monotonic()
        while True:
            n = await pg_count(settings.database_url)
            if n >= 10_000:
                break
            assert time.monotonic() - t_start < 60, f"worker flushed nothing in 60 s:\n{worker.log_tail()}"
            await asyncio.sleep(0.01)
        worker.kill9()
        kill_at = time.monotonic() - t_start
        at_kill = await pg_count(settings.database_url)
        # Proof the kill landed mid-flush: some but not all rows are committed, rooms still pending.
        assert 0 < at_kill < ROOMS * PER_ROOM, at_kill
        pending_at_kill = await ip.redis.scard(ip.keys.pending_rooms())
        assert pending_at_kill > 0

        t_restart = time.monotonic()
        stack.worker(name="worker-2", FLUSH_BATCH_SIZE=str(BATCH))
        # The killed worker's fetched jobs come back after BROKER_HEARTBEAT_TIMEOUT_S; the
        # restarted worker finishes every room.
        deadline = time.monotonic() + 90
        while True:
            n = await pg_count(settings.database_url)
            pending = await ip.redis.scard(ip.keys.pending_rooms())
            if n >= ROOMS * PER_ROOM and pending == 0:
                break
            assert time.monotonic() < deadline, f"not drained: {n} rows, {pending} rooms pending"
            await asyncio.sleep(0.2)
        recover_s = time.monotonic() - t_restart
        rows = await pg_messages(settings.database_url)
        v = verdict(ledger, rows, room_ids)
        cached = [await ip.redis.xlen(ip.keys.room_log(r)) for r in room_ids]
    report("worker kill -9 mid-flush", load=f"{ROOMS * PER_ROOM} msgs/{ROOMS} rooms",
           fill_s=fill_s, fill_msgs_per_s=round(len(ledger.acked) / fill_s),
           batch=BATCH, killed_after_s=kill_at, rows_at_kill=at_kill, rooms_pending_at_kill=pending_at_kill,
           recovered_s=recover_s, **{k: v for k, v in vars(v).items() if k in ("acked", "in_pg")},
           lost=len(v.lost), duplicated=len(v.duplicated), gaps=len(v.gaps),
           max_cached_per_room=max(cached), total_s=clock())
    assert v.lost == [], f"{len(v.lost)} acked messages missing from PostgreSQL"
    assert v.duplicated == []
    assert v.in_pg == v.acked, "PostgreSQL holds messages nobody acked"
    assert v.gaps == {}
    # Trimmed after commit, down to the cache tail.
    assert max(cached) <= settings.cache_tail
