"""Worker failures with real processes: two workers on one room, a worker SIGKILLed mid-flush.

Each test has its own Redis prefix and Dramatiq namespace (`isolated`): its workers see
only the jobs it enqueues, so "only the requeued job can finish it" holds.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

from app.jobs import enqueue, enqueue_flush_room
from tests.fill import make_room, push, start_worker, wait_for, wait_worker_ready

pytestmark = pytest.mark.e2e


@pytest.fixture
def settings(isolated):
    return isolated.settings


@pytest.fixture
def keys(isolated):
    return isolated.keys


async def _check_exact(pool, room: str, n: int) -> None:
    row = await pool.fetchrow("SELECT count(*) AS n, count(DISTINCT seq) AS seqs, count(DISTINCT id) AS ids, "
                              "min(seq) AS lo, max(seq) AS hi FROM messages WHERE room_id = $1", uuid.UUID(room))
    assert dict(row) == {"n": n, "seqs": n, "ids": n, "lo": 1, "hi": n}


async def _suffix_invariant(redis, keys, pool, room: str) -> None:
    """What readers rely on: PostgreSQL holds 1..flushed and the cache everything after it."""
    pipe = redis.pipeline(transaction=True)  # one atomic snapshot of the room's cache keys
    pipe.xrange(keys.room_log(room), count=1)
    pipe.get(keys.room_flushed(room))
    pipe.get(keys.room_seq(room))
    first, flushed, seq = await pipe.execute()
    flushed, seq = int(flushed or 0), int(seq or 0)
    if first:
        assert int(first[0][0].split("-")[0]) <= flushed + 1, (first, flushed)
    else:
        assert flushed == seq
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = $1 AND seq <= $2",
                               uuid.UUID(room), flushed) == flushed


async def test_two_workers_flushing_one_room_under_live_sends(isolated, settings, keys, redis, pool):
    sender, room = await make_room()
    await push(redis, keys, room, sender, 6000)
    workers = [start_worker("worker-pair", isolated.env, FLUSH_BATCH_SIZE="300") for _ in range(2)]
    try:
        await asyncio.gather(*(wait_worker_ready(w) for w in workers))
        total = 6000

        def both_flushed() -> bool:
            return all(f"flush room={room} " in w.output() for w in workers)

        # Live sends, each followed by flush requests, checked as they run; at least 15 rounds,
        # and on until each worker has flushed part of the room (the test's premise).
        rounds = 0
        while rounds < 15 or not both_flushed():
            assert rounds < 150, "one worker took every flush of the room: not two workers at it"
            await push(redis, keys, room, sender, 200)
            total += 200
            for _ in range(2):
                await enqueue_flush_room(settings, room)
            await _suffix_invariant(redis, keys, pool, room)
            await asyncio.sleep(0.05 if rounds < 15 else 0.3)
            rounds += 1

        async def done() -> bool:
            await _suffix_invariant(redis, keys, pool, room)
            return int(await redis.get(keys.room_flushed(room)) or 0) == total
        await wait_for(done, 60, "both workers to drain the room", workers[0])
        await _check_exact(pool, room, total)
        assert await redis.xlen(keys.room_log(room)) == settings.cache_tail
    finally:
        for w in workers:
            w.stop()
    for w in workers:
        log = w.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "[ERROR]" not in log, w.log_tail(60)


async def test_a_worker_killed_mid_flush_is_finished_by_the_next(isolated, settings, keys, redis, pool):
    n = 20_000
    sender, room = await make_room()
    await push(redis, keys, room, sender, n)
    # Small batches make the flush long enough to be killed in the middle of it.
    first = start_worker("worker-killed", isolated.env, FLUSH_BATCH_SIZE="50")
    second = None
    try:
        await wait_worker_ready(first)
        await enqueue_flush_room(settings, room)

        async def started() -> bool:
            return int(await redis.get(keys.room_flushed(room)) or 0) >= 1000
        await wait_for(started, 30, "the first batches", first)
        first.kill(signal.SIGKILL)
        first.popen.wait(5)
        at_kill = int(await redis.get(keys.room_flushed(room)) or 0)
        assert at_kill < n, "the flush finished before the kill; the test proves nothing"

        # No scheduler runs: only Dramatiq requeueing the dead worker's job can finish it.
        second = start_worker("worker-after-kill", isolated.env)
        await wait_worker_ready(second)

        async def finished() -> bool:
            return int(await redis.get(keys.room_flushed(room)) or 0) == n
        await wait_for(finished, 60, "the requeued job to finish the room", second)
        await _check_exact(pool, room, n)
        assert not await redis.sismember(keys.pending_rooms(), room)
        assert [e[0] for e in await redis.xrange(keys.room_log(room), count=1)] == [f"{n - settings.cache_tail + 1}-0"]
        assert f"flush room={room} " in second.log_tail(200)
    finally:
        first.stop()
        if second:
            second.stop()


async def test_a_failing_room_does_not_stop_the_other_rooms_of_its_job(isolated, settings, keys, redis, pool):
    (s1, good1), (s2, good2), (s3, bad) = [await make_room() for _ in range(3)]
    for sender, room in ((s1, good1), (s2, good2), (s3, bad)):
        await push(redis, keys, room, sender, 30)
    # The bad room's flushed mark is not a string: its run's first script fails (WRONGTYPE).
    await redis.delete(keys.room_flushed(bad))
    await redis.hset(keys.room_flushed(bad), "x", "1")
    worker = start_worker("worker-rooms", isolated.env)
    try:
        await wait_worker_ready(worker)
        await enqueue(settings, "flush_rooms", [good1, bad, good2])  # the bad one in the middle

        async def goods_flushed() -> bool:
            return all([int(await redis.get(keys.room_flushed(r)) or 0) == 30 for r in (good1, good2)])
        await wait_for(goods_flushed, 30, "the good rooms of the job", worker)
        await _check_exact(pool, good1, 30)
        await _check_exact(pool, good2, 30)

        # The job raised after trying all three, so Dramatiq retries it.
        async def retried() -> bool:
            return "Retrying message" in worker.output()
        await wait_for(retried, 30, "Dramatiq to retry the job", worker)
        out = worker.output()
        assert f"flush_rooms: room {bad} failed" in out and "RoomsFailed: 1 of 3 rooms failed" in out
        assert await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", uuid.UUID(bad)) == 0
    finally:
        worker.stop()
        await redis.delete(keys.room_flushed(bad))
