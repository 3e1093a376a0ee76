"""The Redis scripts of the message cache, called directly on the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.store import cache, member_sets
from app.realtime import events
from app.store.keys import Keys
from app.store.scripts import Script


def room() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def batcher(redis: Redis) -> AsyncIterator[cache.Batcher]:
    """The accept pipeline as a process's Resources holds it, on the test's client."""
    b = cache.Batcher(redis.connection_pool)
    yield b
    await b.close()


async def accept(batcher: cache.Batcher, keys: Keys, room_id: str, sender: str = "u1",
                 client_id: str | None = None, rate_limit: int = 0, threshold: int = 1000) -> cache.AcceptResult:
    policy = cache.AcceptPolicy(rate_limit=rate_limit, rate_window_ms=60_000, idempotency_ttl_s=60,
                                backlog_threshold=threshold, flush_queued_ttl_s=30)
    return await cache.accept(
        batcher, keys, policy, room_id=room_id, sender_id=sender, client_id=client_id,
        before_seq='{"id":"x","seq":', after_seq=',"body":"b"}', event=events.message_payload_parts(room_id, "c1"),
        rate_limited=True)


async def test_accept_checks_members_then_counter_and_writes_nothing_on_refusal(redis: Redis, batcher: cache.Batcher,
                                                                                keys: Keys) -> None:
    rid = room()
    assert (await accept(batcher, keys, rid)).code == cache.MEMBERS_MISSING
    await member_sets.load(redis, keys, rid, ["u1"])
    assert (await accept(batcher, keys, rid, sender="u2")).code == cache.NOT_MEMBER
    assert (await accept(batcher, keys, rid)).code == cache.SEQ_MISSING
    assert not await redis.exists(keys.room_log(rid), keys.room_seq(rid))
    assert await cache.seed_seq(redis, keys, rid, 0) == 0
    res = await accept(batcher, keys, rid)
    assert (res.code, res.message, res.backlog) == (cache.OK, '{"id":"x","seq":1,"body":"b"}', 1)
    assert await redis.xrange(keys.room_log(rid)) == [("1-0", {"m": res.message})]


async def test_accept_publishes_the_event_and_dedups_client_ids(redis: Redis, batcher: cache.Batcher,
                                                                keys: Keys) -> None:
    rid = room()
    await member_sets.room_created(redis, keys, rid, ["u1"])
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.events_channel())
    await pubsub.get_message(timeout=5)
    first = await accept(batcher, keys, rid, client_id="a")
    dup = await accept(batcher, keys, rid, client_id="a")
    assert dup.code == cache.DUPLICATE and dup.message == first.message
    assert await redis.get(keys.room_seq(rid)) == "1"
    # A later send is the marker: a re-publish of the duplicate would have to come before its event.
    marker = await accept(batcher, keys, rid, client_id="b")
    got = []
    while not got or got[-1][2] != '{"type":"message","message":' + marker.message + "}":
        msg = await pubsub.get_message(timeout=5)
        assert msg is not None, f"the marker's event never came; got {got}"
        got.append(events.decode(msg["data"]))
    await pubsub.aclose()
    assert got == [(f"r:{rid}", "c1", '{"type":"message","message":' + m.message + "}") for m in (first, marker)]
    assert 0 < await redis.ttl(keys.room_client_id(rid, "u1", "a")) <= 60


async def test_rate_limit_and_backlog_trigger(redis: Redis, batcher: cache.Batcher, keys: Keys) -> None:
    rid = room()
    await member_sets.room_created(redis, keys, rid, ["u1"])
    await redis.delete(keys.rate("msg", "u1"))
    results = [await accept(batcher, keys, rid, rate_limit=2, threshold=2) for _ in range(3)]
    assert [r.code for r in results] == [cache.OK, cache.OK, cache.RATE_LIMITED]
    assert [r.flush_queued for r in results[:2]] == [False, True]
    assert 0 < results[2].retry_ms <= 60_000
    assert await redis.get(keys.room_seq(rid)) == "2"
    await redis.set(keys.room_flushed(rid), 2)
    await redis.delete(keys.rate("msg", "u1"))
    assert (await accept(batcher, keys, rid, rate_limit=2, threshold=2)).backlog == 1


async def test_seed_takes_the_stream_last_generated_id_even_after_trimming(redis: Redis, batcher: cache.Batcher,
                                                                           keys: Keys) -> None:
    rid = room()
    await member_sets.room_created(redis, keys, rid, ["u1"])
    for _ in range(4):
        await accept(batcher, keys, rid)
    await redis.xtrim(keys.room_log(rid), maxlen=0, approximate=False)
    await redis.delete(keys.room_seq(rid))
    assert await cache.seed_seq(redis, keys, rid, 2) == 4  # the stream remembers 4
    assert await cache.seed_seq(redis, keys, rid, 9) == 4  # an existing counter is left alone
    await redis.delete(keys.room_seq(rid))
    assert await cache.seed_seq(redis, keys, rid, 9) == 9
    await redis.delete(keys.room_seq(rid), keys.room_log(rid))
    await redis.set(keys.room_flushed(rid), 11)
    assert await cache.seed_seq(redis, keys, rid, 3) == 11


async def test_read_returns_the_first_id_and_ranges(redis: Redis, batcher: cache.Batcher, keys: Keys) -> None:
    rid = room()
    assert await cache.read(redis, keys, rid, ascending=True, lo=1, hi=None, count=10) == cache.CacheRange(None, [])
    await member_sets.room_created(redis, keys, rid, ["u1"])
    for _ in range(6):
        await accept(batcher, keys, rid)
    await redis.xtrim(keys.room_log(rid), minid=3, approximate=False)
    got = await cache.read(redis, keys, rid, ascending=False, lo=1, hi=5, count=2)
    assert got.first_seq == 3 and [s for s, _ in got.entries] == [5, 4]
    got = await cache.read(redis, keys, rid, ascending=True, lo=1, hi=None, count=10)
    assert [s for s, _ in got.entries] == [3, 4, 5, 6]
    assert (await cache.counters(redis, keys, [rid, room()])) == [6, None]


async def test_batched_calls_load_a_missing_script_and_share_round_trips(redis: Redis, batcher: cache.Batcher) -> None:
    script = Script.of("test", f"-- {uuid.uuid4()}\nreturn tonumber(ARGV[1]) * 2")  # never loaded before
    batcher = batcher
    results = await asyncio.gather(*(batcher.call(script, [], [i]) for i in range(50)))
    assert results == [i * 2 for i in range(50)]


async def test_a_lost_connection_fails_the_send_and_the_next_one_reconnects(redis: Redis, batcher: cache.Batcher,
                                                                            keys: Keys) -> None:
    rid = room()
    await member_sets.room_created(redis, keys, rid, ["u1"])
    assert (await accept(batcher, keys, rid)).code == cache.OK
    conn = batcher.conn
    await conn.send_command("CLIENT", "ID")
    await redis.client_kill_filter(_id=str(await conn.read_response()))
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append((await accept(batcher, keys, rid)).code)
        except RedisConnectionError:
            outcomes.append("lost")
    assert outcomes[-1] == cache.OK and outcomes.count("lost") <= 1
    seqs = [int(i.split("-")[0]) for i, _ in await redis.xrange(keys.room_log(rid))]
    assert seqs == list(range(1, len(seqs) + 1))  # a failed send left no gap


async def test_one_error_reply_in_a_pipelined_batch_fails_only_its_own_send(redis: Redis, batcher: cache.Batcher,
                                                                            keys: Keys,
                                                                            monkeypatch) -> None:
    from redis.exceptions import OutOfMemoryError

    key = f"{keys.prefix}:test:batch:{uuid.uuid4().hex}"
    incr = Script.of("test", "return redis.call('INCR', KEYS[1])")
    oom = Script.of("test", "return redis.error_reply('OOM command not allowed when used memory > maxmemory')")
    batcher = batcher
    await batcher.call(incr, [key], [])  # scripts loaded, connection held
    sizes: list[int] = []
    run = batcher._run

    async def recording(batch):  # observe (not change) how the sends were batched
        sizes.append(len(batch))
        return await run(batch)
    monkeypatch.setattr(batcher, "_run", recording)

    calls = [batcher.call(oom, [], []) if i == 3 else batcher.call(incr, [key], []) for i in range(8)]
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert sizes[0] == 8  # one pipelined batch
    assert isinstance(results[3], OutOfMemoryError)
    assert [r for i, r in enumerate(results) if i != 3] == list(range(2, 9))
    assert await redis.get(key) == "8"


async def test_a_reply_lost_mid_batch_keeps_the_answers_already_read(redis: Redis, batcher: cache.Batcher,
                                                                     keys: Keys, monkeypatch) -> None:
    key = f"{keys.prefix}:test:batch:{uuid.uuid4().hex}"
    incr = Script.of("test", "return redis.call('INCR', KEYS[1])")
    batcher = batcher
    await batcher.call(incr, [key], [])
    conn = batcher.conn
    real, reads = conn.read_response, []

    async def flaky(*args, **kwargs):  # the connection drops after two replies of the batch arrived
        reads.append(1)
        if len(reads) == 3:
            raise RedisConnectionError("connection lost mid-batch")
        return await real(*args, **kwargs)
    monkeypatch.setattr(conn, "read_response", flaky)

    results = await asyncio.gather(*(batcher.call(incr, [key], []) for _ in range(6)), return_exceptions=True)

    assert results[:2] == [2, 3]  # their scripts ran and their answers were read: not failed
    assert all(isinstance(r, RedisConnectionError) for r in results[2:])
    monkeypatch.undo()
    assert await batcher.call(incr, [key], []) == 8  # reconnected; the 4 unanswered ones did run


async def test_a_client_id_key_holds_the_seq_and_an_old_style_key_still_answers(redis: Redis, batcher: cache.Batcher,
                                                                                keys: Keys) -> None:
    rid = room()
    await member_sets.room_created(redis, keys, rid, ["u1"])
    first = await accept(batcher, keys, rid, client_id="a")
    assert await redis.get(keys.room_client_id(rid, "u1", "a")) == "1"
    dup = await accept(batcher, keys, rid, client_id="a")
    assert (dup.code, dup.message, dup.seq) == (cache.DUPLICATE, first.message, 1)
    await redis.xtrim(keys.room_log(rid), maxlen=0, approximate=False)  # flushed and trimmed
    dup = await accept(batcher, keys, rid, client_id="a")
    assert (dup.code, dup.message, dup.seq) == (cache.DUPLICATE, "", 1)  # the caller reads PostgreSQL
    await redis.set(keys.room_client_id(rid, "u1", "b"), '{"id":"old","seq":9}', ex=60)  # written before
    dup = await accept(batcher, keys, rid, client_id="b")
    assert (dup.code, dup.message) == (cache.DUPLICATE, '{"id":"old","seq":9}')
    assert await redis.get(keys.room_seq(rid)) == "1"


async def test_is_member_tells_a_loaded_set_from_a_lost_one(redis: Redis, keys: Keys) -> None:
    # One SMISMEMBER of the sentinel and the user: a lost set (None: ask PostgreSQL) must not
    # read as "not a member", and a loaded set with nobody left in it must not read as lost.
    rid = room()
    assert await member_sets.is_member(redis, keys, rid, "u1") is None
    await member_sets.room_created(redis, keys, rid, ["u1"])
    assert await member_sets.is_member(redis, keys, rid, "u1") is True
    assert await member_sets.is_member(redis, keys, rid, "u2") is False
    await redis.srem(keys.room_members(rid), "u1")  # the last member left: only the sentinel stays
    assert await member_sets.is_member(redis, keys, rid, "u1") is False
    await redis.delete(keys.room_members(rid))  # Redis lost the set
    assert await member_sets.is_member(redis, keys, rid, "u1") is None
