"""The flush service in-process against the real PostgreSQL and Redis (app/flush/__init__.py).

On single-node Redis and on a Redis Cluster (`redis_engines`, tests/conftest.py): a room's
pending flag is `keys.pending_set(room)`, the global set on one node, the slot's set on a cluster.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest

from app.flush import _write, flush_all_pending, flush_room, flush_rooms
from app.serialize import dumps
from models.room import Room
from models.user import User
from tests.fill import make_room, message, push

pytestmark = pytest.mark.redis_engines


async def _db_seqs(pool, room_id: str) -> list[int]:
    rows = await pool.fetch("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", uuid.UUID(room_id))
    return [r["seq"] for r in rows]


async def test_flush_writes_every_message_once_then_keeps_only_the_tail(settings, keys, redis, pool):
    s = settings.replace(flush_batch_size=500, cache_tail=200)
    sender, room = await make_room()
    sent = await push(redis, keys, room, sender, 1234)

    res = await flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)

    assert (res.rows, res.batches, res.flushed, res.drained, res.busy) == (1234, 3, 1234, True, False)
    assert await _db_seqs(pool, room) == list(range(1, 1235))
    row = await pool.fetchrow("SELECT * FROM messages WHERE room_id = $1 AND seq = 7", uuid.UUID(room))
    m = sent[6]
    assert (str(row["id"]), str(row["sender_id"]), row["kind"], row["body"], row["client_id"], row["file_id"]) == \
        (m["id"], sender, "text", m["body"], m["client_id"], None)
    assert row["created_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z") == m["created_at"]
    # the cache keeps exactly the newest 200 messages, contiguous, and the room is no longer pending
    ids = [e[0] for e in await redis.xrange(keys.room_log(room))]
    assert ids == [f"{seq}-0" for seq in range(1035, 1235)]
    assert int(await redis.get(keys.room_flushed(room))) == 1234
    assert not await redis.sismember(keys.pending_set(room), room)


async def test_new_messages_after_a_flush_are_flushed_by_the_next(settings, keys, redis, pool):
    s = settings.replace(cache_tail=10)
    sender, room = await make_room()
    await push(redis, keys, room, sender, 50)
    await flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)
    await push(redis, keys, room, sender, 30)
    assert await redis.sismember(keys.pending_set(room), room)

    res = await flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)

    assert (res.rows, res.flushed) == (30, 80)
    assert await _db_seqs(pool, room) == list(range(1, 81))
    assert [e[0] for e in await redis.xrange(keys.room_log(room))] == [f"{q}-0" for q in range(71, 81)]


async def test_unflushed_messages_are_never_trimmed_even_beyond_the_tail(settings, keys, redis, pool):
    s = settings.replace(flush_batch_size=100, cache_tail=5)
    sender, room = await make_room()
    await push(redis, keys, room, sender, 250)
    # a lease held by someone else: nothing is flushed, so nothing may be trimmed
    await redis.set(keys.room_flush_lease(room), "other-worker", px=5000)

    res = await flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)

    assert res.busy and res.rows == 0
    assert await redis.xlen(keys.room_log(room)) == 250
    await redis.delete(keys.room_flush_lease(room))
    res = await flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)
    assert res.rows == 250 and await redis.xlen(keys.room_log(room)) == 5


async def test_rerun_after_a_crash_between_commit_and_trim_writes_nothing_twice(settings, keys, redis, pool):
    sender, room = await make_room()
    sent = await push(redis, keys, room, sender, 300)
    # A worker committed the first 120 rows to PostgreSQL and died before its Redis step.
    await _write(pool, room, [(m["id"], room, m["seq"], sender, "text", m["body"], None, m["client_id"],
                         datetime.fromisoformat(m["created_at"])) for m in sent[:120]])
    assert await redis.get(keys.room_flushed(room)) is None

    res = await flush_room(room, redis=redis, keys=keys, settings=settings, pool=pool)

    assert res.flushed == 300
    assert await _db_seqs(pool, room) == list(range(1, 301))
    ids = {str(r["id"]) for r in await pool.fetch("SELECT id FROM messages WHERE room_id = $1", uuid.UUID(room))}
    assert ids == {m["id"] for m in sent}


async def test_concurrent_flushes_of_one_room_lose_and_double_nothing(settings, keys, redis, pool):
    s = settings.replace(flush_batch_size=250, cache_tail=50)
    sender, room = await make_room()
    await push(redis, keys, room, sender, 5000)

    tasks = [asyncio.create_task(flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)) for _ in range(4)]
    overlapped = 0  # sends accepted while a flush was still running

    async def sender_task() -> None:  # live sends while the flushes run
        nonlocal overlapped
        for _ in range(10):
            await push(redis, keys, room, sender, 100)
            overlapped += any(not t.done() for t in tasks)
            await asyncio.sleep(0.01)

    await sender_task()
    flushes = await asyncio.gather(*tasks)
    await flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)  # what arrived after the last read

    assert overlapped >= 1, "no send landed while a flush ran: the test proves nothing"
    assert any(r.busy for r in flushes)  # the lease turned the others away quietly
    assert await _db_seqs(pool, room) == list(range(1, 6001))
    assert [e[0] for e in await redis.xrange(keys.room_log(room))] == [f"{q}-0" for q in range(5951, 6001)]
    assert not await redis.sismember(keys.pending_set(room), room)


async def test_a_room_deleted_meanwhile_does_not_break_the_flush(settings, keys, redis, pool):
    sender, room = await make_room()
    await push(redis, keys, room, sender, 40)
    await Room.filter(id=room).delete()

    res = await flush_room(room, redis=redis, keys=keys, settings=settings, pool=pool)

    assert res.flushed == 40 and res.drained
    assert await _db_seqs(pool, room) == []
    assert not await redis.sismember(keys.pending_set(room), room)


async def test_a_deleted_sender_is_stored_as_null(settings, keys, redis, pool):
    _owner, room = await make_room()
    gone = await User.create(username="gone" + uuid.uuid4().hex[:8], username_lower="gone" + uuid.uuid4().hex[:8],
                             display_name="x", password_hash="x")
    await push(redis, keys, room, str(gone.id), 3)
    await gone.delete()

    await flush_room(room, redis=redis, keys=keys, settings=settings, pool=pool)

    rows = await pool.fetch("SELECT seq, sender_id FROM messages WHERE room_id = $1 ORDER BY seq", uuid.UUID(room))
    assert [(r["seq"], r["sender_id"]) for r in rows] == [(1, None), (2, None), (3, None)]


async def test_an_unreadable_entry_is_skipped_not_blocking_the_room(settings, keys, redis, pool):
    sender, room = await make_room()
    await push(redis, keys, room, sender, 2)
    await redis.xadd(keys.room_log(room), {"m": "{not json"}, id="3-0")
    await redis.incr(keys.room_seq(room))
    await redis.xadd(keys.room_log(room), {"m": dumps(message(room, 4, sender))}, id="4-0")
    await redis.incr(keys.room_seq(room))

    res = await flush_room(room, redis=redis, keys=keys, settings=settings, pool=pool)

    assert (res.rows, res.skipped, res.flushed) == (3, 1, 4)
    assert await _db_seqs(pool, room) == [1, 2, 4]


async def test_pending_entries_without_messages_or_with_bad_ids_are_dropped(settings, keys, redis, pool):
    _sender, room = await make_room()
    for rid in (room, "not-a-uuid"):
        await redis.sadd(keys.pending_set(rid), rid)

    for rid in (room, "not-a-uuid"):
        res = await flush_room(rid, redis=redis, keys=keys, settings=settings, pool=pool)
        assert res.rows == 0 and res.drained

    assert await redis.sismember(keys.pending_set(room), room) == 0
    assert await redis.sismember(keys.pending_set("not-a-uuid"), "not-a-uuid") == 0


async def test_a_flush_clears_the_backlog_trigger_flag(settings, keys, redis, pool):
    sender, room = await make_room()
    await push(redis, keys, room, sender, 5)
    await redis.set(keys.room_flush_queued(room), "1", ex=60)

    await flush_room(room, redis=redis, keys=keys, settings=settings, pool=pool)

    assert await redis.exists(keys.room_flush_queued(room)) == 0


async def test_flush_rooms_goes_on_past_a_failing_room_and_hands_back_the_rest_when_time_is_up(
        settings, keys, redis, pool):
    (s1, a), (s2, bad), (s3, b) = [await make_room() for _ in range(3)]
    for sender, room in ((s1, a), (s2, bad), (s3, b)):
        await push(redis, keys, room, sender, 20)
    # The bad room's flushed mark is not a string: its run's first script fails (WRONGTYPE).
    await redis.delete(keys.room_flushed(bad))
    await redis.hset(keys.room_flushed(bad), "x", "1")
    try:
        done = await flush_rooms([a, bad, b, a], redis=redis, keys=keys, settings=settings, pool=pool)
        assert [(r.room_id, r.rows, r.drained) for r in done.results] == [(a, 20, True), (b, 20, True)]
        assert list(done.failed) == [bad] and done.left == []
        assert await _db_seqs(pool, a) == list(range(1, 21)) == await _db_seqs(pool, b)
        assert await _db_seqs(pool, bad) == []

        # The job's time is up: the first room still runs, the others are handed back untouched.
        await push(redis, keys, a, s1, 5)
        await push(redis, keys, b, s3, 5)
        done = await flush_rooms([a, b], redis=redis, keys=keys, settings=settings, pool=pool, max_run_s=0)
        assert [(r.room_id, r.rows) for r in done.results] == [(a, 5)] and done.left == [b]
        assert len(await _db_seqs(pool, b)) == 20
    finally:
        await redis.delete(keys.room_flushed(bad))


async def test_flush_all_pending_drains_every_pending_room(isolated, redis, pool):
    # A prefix of its own: under the session's, flush_all_pending would also drain every room
    # the earlier tests left pending (30 s of the inner loop instead of a fraction of one).
    settings, keys = isolated.settings, isolated.keys
    rooms = []
    for n in (10, 700, 1):
        sender, room = await make_room()
        await push(redis, keys, room, sender, n)
        rooms.append((room, n))

    results = {r.room_id: r for r in await flush_all_pending(redis=redis, keys=keys, settings=settings, pool=pool)}

    for room, n in rooms:
        assert results[room].drained and results[room].flushed == n
        assert await _db_seqs(pool, room) == list(range(1, n + 1))


def _records(room: str, sender: str | None, seqs: range, file_id: str | None = None) -> list[tuple]:
    now = datetime.now().astimezone()
    return [(str(uuid.uuid4()), room, q, sender, "text", f"m{q}", file_id, None, now) for q in seqs]


@pytest.mark.redis_engines("single")  # PostgreSQL only: nothing of Redis to vary
async def test_references_are_kept_valid_with_or_without_the_fk_triggers(pool):
    for skip in (True, False):
        sender, room = await make_room()
        missing_user, missing_file, missing_room = (str(uuid.uuid4()) for _ in range(3))
        want = "copy" if skip else "stage"
        assert (await _write(pool, room, _records(room, sender, range(1, 3)), skip_fk=skip)).path == want
        assert (await _write(pool, room, _records(room, missing_user, range(3, 5), file_id=missing_file),
                            skip_fk=skip)).path == "stage"
        assert (await _write(pool, missing_room, _records(missing_room, sender, range(1, 3)),
                            skip_fk=skip)).path == "stage"
        # a re-run of a committed batch (crash before the Redis step) adds nothing
        again = [(str(uuid.uuid4()),) + r[1:] for r in _records(room, sender, range(1, 3))]
        assert (await _write(pool, room, again, skip_fk=skip)).path == "stage"

        rows = await pool.fetch("SELECT seq, sender_id, file_id FROM messages WHERE room_id = $1 ORDER BY seq",
                                uuid.UUID(room))
        assert [(r["seq"], r["sender_id"] and str(r["sender_id"]), r["file_id"]) for r in rows] == \
            [(1, sender, None), (2, sender, None), (3, None, None), (4, None, None)]
        assert await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", uuid.UUID(missing_room)) == 0


async def test_a_role_that_may_not_skip_triggers_still_flushes(settings, keys, redis, pool, monkeypatch):
    import asyncpg

    from app import flush as flush_module
    from tests.env import TEST_DB_URL

    role = f"chat_nosu_{uuid.uuid4().hex[:8]}"
    await pool.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        await pool.execute(f'GRANT SELECT, INSERT ON messages, rooms, users, files TO "{role}"')
        await pool.execute(f'GRANT UPDATE ON rooms, users, files TO "{role}"')  # FOR KEY SHARE needs it
        # the changes and read-marker half of the flush (the send moved the sender's marker)
        await pool.execute(f'GRANT SELECT, UPDATE ON messages, memberships TO "{role}"')
        fk = flush_module.FkSkip()  # what a worker's Resources keeps: not tried yet
        limited = await asyncpg.create_pool(TEST_DB_URL.replace("postgres@", f"{role}@", 1), min_size=1, max_size=2)
        try:
            sender, room = await make_room()
            await push(redis, keys, room, sender, 30)
            res = await flush_room(room, redis=redis, keys=keys, settings=settings, pool=limited, fk=fk)
        finally:
            await limited.close()
        assert fk.allowed is False
        assert res.flushed == 30 and await _db_seqs(pool, room) == list(range(1, 31))
    finally:
        await pool.execute(f'REVOKE ALL ON messages, rooms, users, files, memberships FROM "{role}"')
        await pool.execute(f'DROP ROLE "{role}"')
