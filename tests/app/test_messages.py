"""The accept path and history at the service level, on the real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from app.realtime import events
from app import messages, rooms
from app.errors import NotMember, RateLimited, RoomNotFound, ValidationFailed
from app.resources import Resources
from app.schemas import file_out
from app.store.keys import Keys
from app.rooms import CreateRoom
from app.serialize import dumps, loads
from app.settings import Settings
from models.file import File
from models.user import User


async def move_to_db(redis: Redis, keys: Keys, settings: Settings, room_id: str, upto: int) -> None:
    """Flush the room up to seq `upto` with the real flush (one batch, no tail kept)."""
    from app import flush
    from app.db import raw_pool

    done = int(await redis.get(keys.room_flushed(room_id)) or 0)
    if upto <= done:
        return
    s = settings.replace(flush_batch_size=upto - done, cache_tail=0)
    res = await flush.flush_room(room_id, redis=redis, keys=keys, settings=s, pool=raw_pool(), max_run_s=0)
    assert res.flushed == upto and not res.busy


async def new_user() -> str:
    username = f"m{uuid.uuid4().hex[:10]}"
    user = await User.create(username=username, username_lower=username, display_name=username,
                             password_hash="not-a-hash")
    return str(user.id)


async def new_room(redis: Redis, keys: Keys, owner: str, **fields: Any) -> str:
    data = CreateRoom(name=f"room {uuid.uuid4().hex[:6]}", **fields)
    room = await rooms.create_room(redis=redis, keys=keys, owner_id=owner, data=data)
    return room["id"]


@pytest.fixture
async def room(redis: Redis, keys: Keys, db: None) -> tuple[str, str]:
    """(room_id, owner_id) of a fresh public room."""
    owner = await new_user()
    return await new_room(redis, keys, owner), owner


async def send(redis: Redis, keys: Keys, settings: Settings, room_id: str, sender: str | None, body: str = "hi",
               **kw: Any) -> tuple[dict[str, Any], bool]:
    res = Resources.build(settings, redis, keys)  # one per send: its batcher's connection goes back after
    try:
        return await messages.accept_message(res, room_id=room_id, sender_id=sender, body=body, **kw)
    finally:
        await res.close()


async def room_events(pubsub: PubSub, room_id: str, seconds: float = 0.3) -> list[dict[str, Any]]:
    out = []
    while (msg := await pubsub.get_message(timeout=seconds)) is not None:
        route, _, frame = events.decode(msg["data"])
        if route == f"r:{room_id}":
            out.append(loads(frame))
    return out


# -- accept ------------------------------------------------------------------------

async def test_concurrent_sends_get_gap_free_seqs_and_the_api_shape(redis: Redis, keys: Keys, settings: Settings,
                                                                    room: tuple[str, str], feed: PubSub) -> None:
    room_id, owner = room
    results = await asyncio.gather(*(send(redis, keys, settings, room_id, owner, f"m{i}") for i in range(60)))
    assert sorted(m["seq"] for m, _ in results) == list(range(1, 61))
    assert all(created for _, created in results)
    msg = results[0][0]
    assert set(msg) == {"id", "room_id", "seq", "sender_id", "kind", "body", "file", "client_id", "created_at",
                        "edited_at", "deleted", "version", "reply_to", "mentions", "reactions"}  # issue 12
    assert (msg["edited_at"], msg["deleted"], msg["version"], msg["reply_to"], msg["mentions"],
            msg["reactions"]) == (None, False, 0, None, [], [])
    assert msg["room_id"] == room_id and msg["sender_id"] == owner and msg["kind"] == "text"
    assert msg["file"] is None and msg["client_id"] is None
    assert datetime.strptime(msg["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ") and len(msg["created_at"]) == 24
    published = await room_events(feed, room_id)
    assert [f["message"]["seq"] for f in published] == list(range(1, 61))  # published in seq order
    assert await redis.sismember(keys.pending_rooms(), room_id)


async def test_retried_client_id_returns_the_original_without_a_seq_or_event(
        redis: Redis, keys: Keys, settings: Settings, room: tuple[str, str], feed: PubSub) -> None:
    room_id, owner = room
    first, created = await send(redis, keys, settings, room_id, owner, "once", client_id="c-1")
    again, created_again = await send(redis, keys, settings, room_id, owner, "different body", client_id="c-1")
    assert created and not created_again and again == first
    other, _ = await send(redis, keys, settings, room_id, owner, "next", client_id="c-2")
    assert other["seq"] == first["seq"] + 1
    assert [f["message"]["client_id"] for f in await room_events(feed, room_id)] == ["c-1", "c-2"]
    # client_id is scoped to (room, sender): another member may use the same one
    member = await new_user()
    await rooms.join_room(redis=redis, keys=keys, room_id=room_id, user_id=member)
    theirs, created = await send(redis, keys, settings, room_id, member, "mine", client_id="c-1")
    assert created and theirs["seq"] == other["seq"] + 1


@pytest.mark.parametrize("body,client_id,field", [
    ("", None, "body"), ("   \n", None, "body"), ("x" * 4001, None, "body"), (5, None, "body"),
    ("ok", "c" * 65, "client_id"), ("ok", "", "client_id"), ("ok", 7, "client_id"),
])
async def test_rejected_sends_consume_no_seq(redis: Redis, keys: Keys, settings: Settings, room: tuple[str, str],
                                             body: Any, client_id: Any, field: str) -> None:
    room_id, owner = room
    with pytest.raises(ValidationFailed) as info:
        await send(redis, keys, settings, room_id, owner, body, client_id=client_id)
    assert field in info.value.details["fields"]
    msg, _ = await send(redis, keys, settings, room_id, owner, "x" * 4000)
    assert msg["seq"] == 1


async def test_non_members_are_refused_as_the_room_is_visible(redis: Redis, keys: Keys, settings: Settings,
                                                              db: None) -> None:
    owner, outsider = await new_user(), await new_user()
    public = await new_room(redis, keys, owner)
    private = await new_room(redis, keys, owner, is_private=True)
    with pytest.raises(NotMember):
        await send(redis, keys, settings, public, outsider)
    with pytest.raises(RoomNotFound):
        await send(redis, keys, settings, private, outsider)
    with pytest.raises(RoomNotFound):
        await send(redis, keys, settings, "not-a-uuid", owner)
    with pytest.raises(RoomNotFound):
        await send(redis, keys, settings, str(uuid.uuid4()), owner)
    assert (await send(redis, keys, settings, public, owner))[0]["seq"] == 1  # nothing consumed


async def test_rate_limit_is_per_user_and_consumes_no_seq(redis: Redis, keys: Keys, settings: Settings,
                                                          room: tuple[str, str]) -> None:
    room_id, owner = room
    tight = settings.replace(rate_messages=3, rate_messages_window_s=60)
    for _ in range(3):
        await send(redis, keys, tight, room_id, owner)
    with pytest.raises(RateLimited) as info:
        await send(redis, keys, tight, room_id, owner)
    assert 1 <= info.value.details["retry_after"] <= 60
    assert info.value.headers["Retry-After"] == str(info.value.details["retry_after"])
    msg, _ = await send(redis, keys, tight, room_id, None, "system note", kind="system")  # not rate limited
    assert msg["seq"] == 4 and msg["sender_id"] is None
    msg, _ = await send(redis, keys, tight, room_id, owner, "worker", rate_limit=False)
    assert msg["seq"] == 5


async def test_lost_member_set_is_rebuilt_from_postgres(redis: Redis, keys: Keys, settings: Settings,
                                                        room: tuple[str, str]) -> None:
    room_id, owner = room
    outsider = await new_user()
    await redis.delete(keys.room_members(room_id))
    assert (await send(redis, keys, settings, room_id, owner))[0]["seq"] == 1
    assert await redis.sismember(keys.room_members(room_id), owner)
    await redis.delete(keys.room_members(room_id))
    with pytest.raises(NotMember):
        await send(redis, keys, settings, room_id, outsider)


async def test_history_for_a_member_checks_the_set_in_the_same_read(redis: Redis, keys: Keys, settings: Settings,
                                                                    room: tuple[str, str]) -> None:
    # A WebSocket sync reads with member=...: the read's script checks the Redis set first.
    # Only "a member the loaded set holds" reads; a stranger, or a set Redis lost, reads
    # nothing and raises MembershipUnknown (the caller then runs the full check).
    room_id, owner = room
    outsider = await new_user()
    for i in range(3):
        await send(redis, keys, settings, room_id, owner, f"m{i}")

    async def read(user: str) -> list[int]:
        items, _ = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id, before=None,
                                          after=1, limit=10, viewer_id=user, member=user)
        return [m["seq"] for m in items]

    assert await read(owner) == [2, 3]
    with pytest.raises(messages.MembershipUnknown):
        await read(outsider)
    await redis.delete(keys.room_members(room_id))  # Redis lost the set: not "not a member"
    with pytest.raises(messages.MembershipUnknown):
        await read(owner)


async def test_lost_counter_continues_after_postgres_and_the_stream(redis: Redis, keys: Keys, settings: Settings,
                                                                    room: tuple[str, str]) -> None:
    room_id, owner = room
    for i in range(5):
        await send(redis, keys, settings, room_id, owner, f"m{i}")
    # Only the counter is lost: the stream's last id (5) wins.
    await redis.delete(keys.room_seq(room_id))
    assert (await send(redis, keys, settings, room_id, owner))[0]["seq"] == 6
    # Flushed and trimmed, then counter, stream and flushed mark lost: PostgreSQL's max wins.
    await move_to_db(redis, keys, settings, room_id, 6)
    await redis.delete(keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id))
    assert (await send(redis, keys, settings, room_id, owner))[0]["seq"] == 7
    items, has_more = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                                             before=None, after=None, limit=50)
    assert [m["seq"] for m in items] == list(range(1, 8)) and not has_more


async def test_backlog_over_threshold_marks_one_flush(redis: Redis, keys: Keys, settings: Settings,
                                                      room: tuple[str, str]) -> None:
    room_id, owner = room
    low = settings.replace(flush_backlog_threshold=3)
    for _ in range(2):
        await send(redis, keys, low, room_id, owner)
    assert not await redis.exists(keys.room_flush_queued(room_id))
    await send(redis, keys, low, room_id, owner)
    assert await redis.exists(keys.room_flush_queued(room_id))
    assert await redis.ttl(keys.room_flush_queued(room_id)) > 0
    await asyncio.sleep(0.1)  # the enqueue runs in the background and never fails the send


# -- history -------------------------------------------------------------------------

async def hist(redis: Redis, keys: Keys, settings: Settings, room_id: str, before: int | None = None,
               after: int | None = None, limit: int = 50) -> tuple[list[int], bool]:
    items, more = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                                         before=before, after=after, limit=limit)
    return [m["seq"] for m in items], more


@pytest.mark.parametrize("flushed_upto", [0, 7, 20])
async def test_history_pages_the_same_wherever_the_rows_are(redis: Redis, keys: Keys, settings: Settings,
                                                            room: tuple[str, str], flushed_upto: int) -> None:
    room_id, owner = room
    for i in range(20):
        await send(redis, keys, settings, room_id, owner, f"m{i}")
    if flushed_upto:
        await move_to_db(redis, keys, settings, room_id, flushed_upto)
    assert await hist(redis, keys, settings, room_id, limit=5) == ([16, 17, 18, 19, 20], True)
    assert await hist(redis, keys, settings, room_id, before=16, limit=5) == ([11, 12, 13, 14, 15], True)
    assert await hist(redis, keys, settings, room_id, before=6, limit=5) == ([1, 2, 3, 4, 5], False)
    assert await hist(redis, keys, settings, room_id, after=0, limit=5) == ([1, 2, 3, 4, 5], True)
    assert await hist(redis, keys, settings, room_id, after=5, limit=10) == (list(range(6, 16)), True)
    assert await hist(redis, keys, settings, room_id, after=15, limit=10) == ([16, 17, 18, 19, 20], False)
    assert await hist(redis, keys, settings, room_id, after=3, before=9) == ([4, 5, 6, 7, 8], False)
    assert await hist(redis, keys, settings, room_id, after=3, before=9, limit=2) == ([4, 5], True)
    assert await hist(redis, keys, settings, room_id, after=20) == ([], False)
    assert await hist(redis, keys, settings, room_id, after=5, before=6) == ([], False)
    assert await hist(redis, keys, settings, room_id) == (list(range(1, 21)), False)
    for seq in (1, 7, 8, 20):
        msg = await messages.get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=seq)
        assert msg is not None and msg["seq"] == seq and msg["body"] == f"m{seq - 1}"
    assert await messages.get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=21) is None


async def test_messages_from_db_and_cache_render_identically(redis: Redis, keys: Keys, settings: Settings,
                                                             room: tuple[str, str]) -> None:
    room_id, owner = room
    for i in range(3):
        await send(redis, keys, settings, room_id, owner, f"é {i} \"quoted\"", client_id=f"c{i}")
    cached, _ = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                                       before=None, after=None, limit=50)
    await move_to_db(redis, keys, settings, room_id, 3)
    assert not await redis.xlen(keys.room_log(room_id))
    stored, _ = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                                       before=None, after=None, limit=50)
    assert stored == cached


async def test_cached_file_messages_show_the_files_current_expiry(redis: Redis, keys: Keys, settings: Settings,
                                                                  room: tuple[str, str]) -> None:
    room_id, owner = room
    expires = datetime.now(timezone.utc) + timedelta(days=7)
    f = await File.create(room_id=room_id, uploader_id=owner, name="a.pdf", mime="application/pdf", size=10,
                          status="ready", expires_at=expires)
    msg, _ = await send(redis, keys, settings, room_id, owner, "", kind="file", file=file_out(f),
                        rate_limit=False)
    assert msg["file"]["expired"] is False and msg["kind"] == "file" and msg["body"] == ""
    f.expired = True
    await f.save()
    cached = await messages.get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=1)
    assert cached is not None and cached["file"]["expired"] is True and cached["file"]["id"] == str(f.id)
    await move_to_db(redis, keys, settings, room_id, 1)
    stored = await messages.get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=1)
    assert stored == cached


async def test_history_stays_exact_while_rows_move_under_concurrent_sends(
        redis: Redis, keys: Keys, settings: Settings, room: tuple[str, str]) -> None:
    room_id, owner = room
    total, done = 400, asyncio.Event()

    async def sender() -> None:
        for i in range(total):
            await send(redis, keys, settings, room_id, owner, f"m{i}")
        done.set()

    reads_at_flush: list[int] = []  # the reader's page count at each real flush: proves the overlap
    pages = 0

    async def mover() -> None:
        while not done.is_set():
            top = int(await redis.get(keys.room_seq(room_id)) or 0)
            flushed = int(await redis.get(keys.room_flushed(room_id)) or 0)
            if top - 3 > flushed:
                await move_to_db(redis, keys, settings, room_id, top - 3)
                reads_at_flush.append(pages)
            await asyncio.sleep(0)

    async def reader() -> None:
        nonlocal pages
        while not done.is_set():
            seqs, _ = await hist(redis, keys, settings, room_id, limit=200)
            if seqs:
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
                assert seqs[-1] >= len(seqs) and (len(seqs) == 200 or seqs[0] == 1)
            after = max(0, (seqs[-1] if seqs else 0) - 150)
            page, _ = await hist(redis, keys, settings, room_id, after=after, limit=100)
            assert page == list(range(after + 1, after + 1 + len(page)))
            pages += 1

    await asyncio.gather(sender(), mover(), reader())
    # reads ran between flushes: at least two flushes saw different read counts
    assert pages > 0 and len(set(reads_at_flush)) >= 2, (pages, reads_at_flush)
    seqs, more = await hist(redis, keys, settings, room_id, limit=200)
    assert seqs == list(range(201, 401)) and more
    assert int(await redis.get(keys.room_flushed(room_id)) or 0) > 0  # rows really moved
    assert await redis.xlen(keys.room_log(room_id)) < total


# -- direct mode -----------------------------------------------------------------------

async def test_direct_mode_orders_dedups_and_serves_history(redis: Redis, keys: Keys, settings: Settings,
                                                            room: tuple[str, str], feed: PubSub) -> None:
    room_id, owner = room
    direct = settings.replace(write_mode="direct")
    results = await asyncio.gather(*(send(redis, keys, direct, room_id, owner, f"d{i}") for i in range(30)))
    assert sorted(m["seq"] for m, _ in results) == list(range(1, 31))
    first, created = await send(redis, keys, direct, room_id, owner, "x", client_id="k")
    again, created_again = await send(redis, keys, direct, room_id, owner, "y", client_id="k")
    assert created and not created_again and again == first and first["seq"] == 31
    assert not await redis.xlen(keys.room_log(room_id))  # nothing went through the cache
    assert await hist(redis, keys, direct, room_id, limit=5) == ([27, 28, 29, 30, 31], True)
    assert [f["message"]["seq"] for f in await room_events(feed, room_id)] == list(range(1, 32))
    last = await messages.last_seqs(redis=redis, keys=keys, settings=direct, room_ids=[room_id])
    assert last == {room_id: 31}
    with pytest.raises(NotMember):
        await send(redis, keys, direct, room_id, await new_user())


# -- retention and files in the cache tail ------------------------------------------------

async def test_messages_past_retention_are_not_served_from_the_cache_tail_or_postgres(
        redis: Redis, keys: Keys, settings: Settings, room: tuple[str, str]) -> None:
    from app import flush
    from app.db import raw_pool

    room_id, owner = room
    old = datetime.now(timezone.utc) - timedelta(days=settings.retention_days, hours=1)
    # seq 1: a tail entry of a room idle for longer than the retention window
    assert await redis.incr(keys.room_seq(room_id)) == 1
    stale = {"id": str(uuid.uuid4()), "room_id": room_id, "seq": 1, "sender_id": owner, "kind": "text",
             "body": "from last season", "file": None, "client_id": None,
             "created_at": old.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    await redis.xadd(keys.room_log(room_id), {"m": dumps(stale)}, id="1-0")
    for i in range(2):
        await send(redis, keys, settings, room_id, owner, f"new {i}")

    assert await hist(redis, keys, settings, room_id) == ([2, 3], False)
    assert await hist(redis, keys, settings, room_id, after=0) == ([2, 3], False)
    assert await messages.get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=1) is None
    # the same once flushed, before the nightly prune deleted the row
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings.replace(cache_tail=0),
                           pool=raw_pool())
    assert not await redis.xlen(keys.room_log(room_id))
    assert await hist(redis, keys, settings, room_id) == ([2, 3], False)


async def test_a_cached_message_whose_file_row_is_gone_shows_it_expired(
        redis: Redis, keys: Keys, settings: Settings, room: tuple[str, str]) -> None:
    room_id, owner = room
    f = await File.create(room_id=room_id, uploader_id=owner, name="a.pdf", mime="application/pdf", size=10,
                          status="ready", expires_at=datetime.now(timezone.utc) + timedelta(days=7))
    await send(redis, keys, settings, room_id, owner, "", kind="file", file=file_out(f), rate_limit=False)
    await File.filter(id=f.id).delete()  # purged with its retention period

    cached = await messages.get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=1)

    assert cached is not None and cached["file"]["id"] == str(f.id) and cached["file"]["expired"] is True
