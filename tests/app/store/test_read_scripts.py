"""The read side's Redis scripts called directly on the real Redis: read.lua's overlay window
(both ways it reads the `state` hash), changes_read.lua, mark_read.lua (its event is exactly
the codec's frame) and read_state.lua (a PostgreSQL marker heals a lost value)."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from app.realtime import events
from app.serialize import dumps, loads
from app.store import cache, reads, scripts
from app.store.keys import Keys


def room() -> str:
    return str(uuid.uuid4())


async def fill(redis: Redis, keys: Keys, rid: str, n: int) -> None:
    """n stream entries with seqs 1..n and the seq counter at n, as the accept script leaves them."""
    for s in range(1, n + 1):
        await redis.xadd(keys.room_log(rid), {"m": dumps({"seq": s, "body": f"m{s}"})}, id=f"{s}-0")
    await redis.set(keys.room_seq(rid), n)


async def test_read_returns_the_overlay_of_the_page_window_and_the_version(redis: Redis, keys: Keys) -> None:
    rid = room()
    await fill(redis, keys, rid, 300)
    await redis.set(keys.room_version(rid), 9)
    # Few changed messages: the script reads the whole hash and keeps the window's.
    await redis.hset(keys.room_state(rid), mapping={"5": "five", "295": "two-ninety-five", "300": "last"})
    got = await cache.read(redis, keys, rid, ascending=False, lo=1, hi=None, count=10)
    assert [s for s, _ in got.entries] == list(range(300, 290, -1))
    assert got.overlay == {295: "two-ninety-five", 300: "last"} and got.version == 9
    assert got.window == (291, 300)
    got = await cache.read(redis, keys, rid, ascending=True, lo=3, hi=None, count=5)
    assert got.overlay == {5: "five"} and got.window == (3, 7)
    got = await cache.read(redis, keys, rid, ascending=False, lo=1, hi=10, count=3)
    assert got.overlay == {} and got.window == (8, 10)
    # More changed messages than the window holds: the window's fields only (HMGET).
    await redis.hset(keys.room_state(rid), mapping={str(s): f"s{s}" for s in range(100, 200)})
    got = await cache.read(redis, keys, rid, ascending=True, lo=150, hi=None, count=3)
    assert got.overlay == {150: "s150", 151: "s151", 152: "s152"}
    # No counter: version None; an empty room: no window.
    other = room()
    got = await cache.read(redis, keys, other, ascending=False, lo=1, hi=None, count=10)
    assert (got.first_seq, got.entries, got.overlay, got.version) == (None, [], {}, None)


async def test_changes_read_lists_every_unflushed_change_and_the_first_states(redis: Redis, keys: Keys) -> None:
    rid = room()
    await redis.zadd(keys.room_changed(rid), {"4": 2, "9": 3, "2": 5, "30": 6, "7": 8})
    await redis.hset(keys.room_state(rid), mapping={"4": "s4", "9": "s9", "2": "s2", "30": "s30", "7": "s7"})
    await redis.set(keys.room_version(rid), 8)
    version, pairs, states = await scripts.CHANGES_READ(
        redis, [keys.room_changed(rid), keys.room_state(rid), keys.room_version(rid)], [2, 20, 2])
    assert version == "8"
    assert pairs == ["9", "3", "2", "5", "7", "8"]  # above version 2, seq <= 20, by version
    assert states == ["s9", "s2"]  # only the first `want` states


async def test_mark_read_publishes_the_codecs_frame_only_when_it_moves(redis: Redis, keys: Keys, feed) -> None:
    rid, user = room(), "u1"
    await redis.sadd(keys.room_members(rid), user)
    await redis.set(keys.room_seq(rid), 10)
    mnt = keys.room_mentions(rid, "alice")
    await redis.zadd(mnt, {"3": 3, "6": 6, "9": 9})
    parts = events.read_payload_parts(rid, user)

    async def call(seq: int, floor: int | None = None) -> reads.Marker:
        return await reads.mark_read(redis, keys, room_id=rid, user_id=user, username="alice", seq=seq,
                                     event=parts, floor=floor)

    assert (await call(4)).code == reads.NEED_FLOOR  # no marker in Redis: ask PostgreSQL first
    got = await call(4, floor=0)
    assert got == reads.Marker(reads.OK, 4, 6, 2, True)
    assert await redis.zrange(mnt, 0, -1) == ["6", "9"]  # pruned up to the marker
    assert await redis.sismember(keys.room_reads_dirty(rid), user)
    assert await redis.sismember(keys.pending_rooms(), rid)
    assert await call(2) == reads.Marker(reads.OK, 4, 6, 2, False)
    assert await call(99) == reads.Marker(reads.OK, 10, 0, 0, True)
    frames = []
    while (m := await feed.get_message(timeout=0.3)) is not None:
        route, exclude, frame = events.decode(m["data"])
        if route == f"u:{user}":
            frames.append(loads(frame))
    assert frames == [
        {"type": "read", "room_id": rid, "last_read_seq": 4, "unread_count": 6, "mention_count": 2},
        {"type": "read", "room_id": rid, "last_read_seq": 10, "unread_count": 0, "mention_count": 0}]
    assert (await reads.mark_read(redis, keys, room_id=rid, user_id="u2", username="bob", seq=1, event=parts)).code \
        == reads.NOT_MEMBER
    await redis.delete(keys.room_members(rid))
    assert (await call(1)).code == reads.MEMBERS_MISSING


async def test_read_state_takes_the_larger_marker_and_writes_it_back(redis: Redis, keys: Keys) -> None:
    a, b, c = room(), room(), room()
    for rid, last in ((a, 50), (b, 8)):
        await redis.set(keys.room_seq(rid), last)
    await redis.hset(keys.room_reads(a), "u1", 40)
    await redis.zadd(keys.room_mentions(a, "alice"), {"30": 30, "45": 45, "49": 49})
    got = await reads.read_states(redis, keys, user_id="u1", username="alice", rooms={a: 30, b: 5, c: 0})
    assert got[a] == reads.RoomReadState(50, 40, 10, 2)  # Redis ahead of PostgreSQL
    assert got[b] == reads.RoomReadState(8, 5, 3, 0)  # Redis had nothing: PostgreSQL's, written back
    assert await redis.hget(keys.room_reads(b), "u1") == "5"
    assert got[c].last_seq is None  # the counter is lost: the service re-seeds it
