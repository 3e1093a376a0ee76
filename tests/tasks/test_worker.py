"""The real worker (`dramatiq tasks.worker` subprocess) on the real Redis broker."""

from __future__ import annotations

import json
import asyncio
import uuid
from datetime import timedelta
from typing import Iterator

import pytest

from app import messages
from app.jobs import DEFAULT_QUEUE, Producer, enqueue, enqueue_flush_room
from app.resources import Resources
from app.serialize import utcnow
from app.store.keys import Keys
from app.settings import Settings
from models.file import File
from tests.env import Isolated, isolated_env
from tests.fill import make_room, push, start_worker, wait_for, wait_worker_ready
from tests.support import Proc

pytestmark = pytest.mark.e2e

# The module's own Redis prefix and Dramatiq namespace: the worker below sees only the jobs
# these tests enqueue (no scheduler tick, no other test's backlog trigger), so "the triggered
# flush ran once" means what it says.
ISO: Isolated = isolated_env("worker")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return ISO.settings


@pytest.fixture(scope="module")
def keys() -> Keys:
    return ISO.keys


@pytest.fixture(scope="module")
def worker() -> Iterator[Proc]:
    proc = start_worker("worker", ISO.env)
    asyncio.run(wait_worker_ready(proc))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_path.read_text(errors="replace"), proc.log_tail(80)


async def _seqs(pool, room_id: str) -> list[int]:
    return [r["seq"] for r in await pool.fetch("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq",
                                               uuid.UUID(room_id))]


async def test_flush_pending_moves_10000_messages_of_20_rooms_exactly(settings, keys, redis, pool, worker):
    rooms = [await make_room() for _ in range(20)]
    sent = {}
    for sender, room in rooms:
        sent[room] = await push(redis, keys, room, sender, 500)

    await enqueue(settings, "flush_pending")

    ids = [uuid.UUID(r) for _, r in rooms]

    async def all_there() -> bool:
        return await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = ANY($1::uuid[])", ids) >= 10_000
    await wait_for(all_there, 60, "10,000 messages in PostgreSQL", worker)

    for _sender, room in rooms:
        assert await _seqs(pool, room) == list(range(1, 501))
        db_ids = {str(r["id"]) for r in await pool.fetch("SELECT id FROM messages WHERE room_id = $1",
                                                         uuid.UUID(room))}
        assert db_ids == {m["id"] for m in sent[room]}

    async def caches_trimmed() -> bool:
        pending = await redis.smismember(keys.pending_rooms(), [r for _, r in rooms])
        lens = [await redis.xlen(keys.room_log(r)) for _, r in rooms]
        return not any(pending) and lens == [settings.cache_tail] * 20
    await wait_for(caches_trimmed, 10, "pending cleared and caches down to the tail", worker)
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = ANY($1::uuid[])", ids) == 10_000


async def test_backlog_trigger_enqueues_one_job_that_flushes_the_room(settings, keys, redis, pool, worker):
    sender, room = await make_room()
    n = settings.flush_backlog_threshold
    # The accept path's own trigger: the send that makes the backlog reach the threshold (the
    # last one here) sets flush_queued and enqueues flush_room; nothing else enqueues.
    await push(redis, keys, room, sender, n, settings=settings, trigger=True)

    async def flushed() -> bool:
        return int(await redis.get(keys.room_flushed(room)) or 0) == n
    await wait_for(flushed, 30, "the triggered flush", worker)
    assert await _seqs(pool, room) == list(range(1, n + 1))
    assert await redis.exists(keys.room_flush_queued(room)) == 0  # re-armed for the next backlog
    assert worker.log_tail(400).count(f"flush room={room} ") == 1


async def test_a_burst_of_backlog_triggers_for_many_rooms_becomes_few_jobs(settings, keys, redis, pool, worker):
    n_rooms, threshold = 40, 5
    # A wide window: the 40 triggers land in one event-loop burst, whatever the machine's load.
    s = settings.replace(flush_backlog_threshold=threshold, flush_coalesce_ms=2000)
    rooms = [await make_room() for _ in range(n_rooms)]
    res = Resources.build(s, redis, keys)
    broker = res.jobs.broker()
    queued: list = []
    enqueue_real = broker.enqueue

    def recording(message, *, delay=None):  # the real enqueue, recorded
        queued.append(message)
        return enqueue_real(message, delay=delay)
    broker.enqueue = recording
    try:
        # Every room reaches the threshold in the last round: 40 triggers within milliseconds.
        for i in range(threshold):
            await asyncio.gather(*(messages.accept_message(res, room_id=room, sender_id=sender, body=f"m{i}")
                                   for sender, room in rooms))
        ids = [uuid.UUID(r) for _, r in rooms]

        async def all_there() -> bool:
            return await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = ANY($1::uuid[])",
                                       ids) == n_rooms * threshold
        await wait_for(all_there, 30, "every room's messages in PostgreSQL", worker)
    finally:
        await res.close()
    # Before: 40 flush_room jobs. Now a full job (32 rooms) goes at once, the rest with the window.
    assert 2 <= len(queued) <= 3, [m.args for m in queued]
    assert {m.actor_name for m in queued} == {"flush_rooms"}
    got = [r for m in queued for r in m.args[0]]
    assert sorted(got) == sorted(r for _, r in rooms) and all(len(m.args[0]) <= 32 for m in queued)
    for _sender, room in rooms:
        assert await _seqs(pool, room) == list(range(1, threshold + 1))
        assert await redis.exists(keys.room_flush_queued(room)) == 0  # re-armed by the run
    log = worker.log_tail(2000)
    assert all(log.count(f"flush room={room} ") == 1 for _, room in rooms)


async def test_trigger_flush_waits_out_the_window_sends_a_full_job_at_once_and_the_rest_at_close(redis):
    iso = isolated_env("trigger")  # no worker consumes this namespace: the jobs stay to be read
    producer = Producer(iso.settings.replace(flush_coalesce_ms=60_000, flush_job_rooms=4))
    ns, q = iso.keys.dramatiq_namespace(), DEFAULT_QUEUE

    async def queued() -> list[list[str]]:
        ids = await redis.lrange(f"{ns}:{q}", 0, -1)
        return [json.loads(await redis.hget(f"{ns}:{q}.msgs", i))["args"][0] for i in ids]

    rooms = [str(uuid.uuid4()) for _ in range(7)]
    try:
        for r in rooms[:3] + rooms[:1]:  # a room triggered twice goes once
            producer.trigger_flush(r)
        await asyncio.sleep(0.3)
        assert await queued() == []  # inside the window
        producer.trigger_flush(rooms[3])  # four: a full job, at once
        deadline = asyncio.get_running_loop().time() + 10
        while not await queued() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert await queued() == [rooms[:4]]
        for r in rooms[4:]:
            producer.trigger_flush(r)
        await producer.aclose()  # a shutdown does not wait the minute, nor drop the three
        assert await queued() == [rooms[:4], rooms[4:]]
    finally:
        producer.close()
        await redis.delete(f"{ns}:{q}", f"{ns}:{q}.msgs")


async def test_trigger_flush_logs_an_enqueue_failure_and_keeps_working(caplog):
    producer = Producer(isolated_env("trigger").settings.replace(broker_url="redis://127.0.0.1:1/0",
                                                                 flush_coalesce_ms=0))
    try:
        with caplog.at_level("WARNING", logger="chat.jobs"):
            producer.trigger_flush(str(uuid.uuid4()))
            task = producer._flush_task
            assert task is not None
            await task  # the task ends; the failure is logged, never raised into the send
        assert "could not enqueue flush_rooms for 1 rooms" in caplog.text
        assert producer._flush_task is None
    finally:
        await producer.aclose()


async def test_enqueue_puts_exactly_one_job_on_the_workers_queue(settings, keys, redis):
    room = str(uuid.uuid4())  # no worker consumes a queue named after nothing: inspect the job itself
    ns = keys.dramatiq_namespace()
    from app.jobs import Producer, job

    producer = Producer(settings)
    msg = producer.broker().enqueue(job("flush_room", room).copy(queue_name="inspect-only"))
    raw = await redis.hget(f"{ns}:inspect-only.msgs", msg.options["redis_message_id"])
    assert json.loads(raw)["actor_name"] == "flush_room" and json.loads(raw)["args"] == [room]
    assert await redis.llen(f"{ns}:inspect-only") == 1
    # a producer leaves no heartbeat behind (maintenance would KEYS-scan for it once stale)
    assert await redis.zscore(f"{ns}:__heartbeats__", producer.broker().broker_id) is None
    producer.close()
    await redis.delete(f"{ns}:inspect-only", f"{ns}:inspect-only.msgs")


async def test_prune_and_sweep_run_in_the_worker(settings, keys, redis, pool, worker, db):
    sender, room = await make_room()
    old = utcnow() - timedelta(days=settings.retention_days, hours=1)
    await push(redis, keys, room, sender, 5, created_at=old)
    await push(redis, keys, room, sender, 3)
    expired = await File.create(room_id=room, uploader_id=sender, name="a.txt", status="ready",
                                expires_at=utcnow() - timedelta(minutes=1))
    await enqueue_flush_room(settings, room)
    await wait_for(lambda: _count_is(pool, room, 8), 30, "the flush", worker)

    await enqueue(settings, "prune_old_messages")
    await enqueue(settings, "sweep_expired_files")

    await wait_for(lambda: _count_is(pool, room, 3), 30, "the prune", worker)
    assert await _seqs(pool, room) == [6, 7, 8]

    async def swept() -> bool:
        return (await File.get(id=expired.id)).status == "expired"
    await wait_for(swept, 30, "the sweep", worker)


async def _count_is(pool, room: str, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", uuid.UUID(room)) == n
