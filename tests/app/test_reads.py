"""Read markers, unread and mention counts (app/reads.py), on the real Redis and PostgreSQL:
forward only, clamped, the same from any number of concurrent connections, exact after a
thousand messages across a flush, healed from PostgreSQL when Redis lost them."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from app import lifecycle, reads, rooms
from app.errors import NotMember, RoomNotFound, ValidationFailed
from app.realtime import events
from app.resources import Resources
from app.serialize import loads
from app.settings import Settings
from app.store.keys import Keys
from models.room import Membership
from models.user import User
from tests.app.test_history_overlay import move_to_db
from tests.app.test_messages import new_room, new_user, send


async def name_of(user_id: str) -> str:
    return (await User.get(id=user_id)).username_lower


async def mark(res: Resources, rid: str, user: str, seq: int, username: str | None = None) -> dict[str, Any]:
    return await reads.mark_read(res, room_id=rid, user_id=user, username=username, seq=seq)


async def state(res: Resources, rid: str, user: str) -> dict[str, Any]:
    pg = dict(await rooms.memberships_of_user(user))
    return (await reads.read_states(res, user_id=user, username=None, rooms={rid: pg[rid]}))[rid]


async def read_frames(feed: PubSub, user: str, seconds: float = 0.3) -> list[dict[str, Any]]:
    out = []
    while (m := await feed.get_message(timeout=seconds)) is not None:
        route, _, frame = events.decode(m["data"])
        if route == f"u:{user}" and frame.startswith('{"type":"read"'):
            out.append(loads(frame))
    return out


async def test_marker_moves_forward_only_clamped_and_tells_the_users_connections(
        res: Resources, settings: Settings, room: tuple[str, str, str], feed: PubSub) -> None:
    rid, owner, member = room
    for i in range(10):
        await send(res.redis, res.keys, settings, rid, owner, f"m{i}")
    assert await state(res, rid, member) == {"last_read_seq": 0, "unread_count": 10, "mention_count": 0,
                                              "last_seq": 10}
    await read_frames(feed, member, 0.05)
    got = await mark(res, rid, member, 4)
    assert got == {"room_id": rid, "last_read_seq": 4, "unread_count": 6, "mention_count": 0}
    assert await mark(res, rid, member, 2) == got  # never backwards
    assert (await mark(res, rid, member, 10**12))["last_read_seq"] == 10  # clamped to the last seq
    assert await read_frames(feed, member) == [
        {"type": "read", "room_id": rid, "last_read_seq": 4, "unread_count": 6, "mention_count": 0},
        {"type": "read", "room_id": rid, "last_read_seq": 10, "unread_count": 0, "mention_count": 0}]
    # The sender's own message is read by them (the send moved their marker).
    assert (await state(res, rid, owner))["unread_count"] == 0


async def test_markers_from_concurrent_connections_converge(res: Resources, settings: Settings,
                                                            room: tuple[str, str, str], feed: PubSub) -> None:
    rid, owner, member = room
    for i in range(50):
        await send(res.redis, res.keys, settings, rid, owner, f"m{i}")
    await read_frames(feed, member, 0.05)
    targets = list(range(1, 51)) * 2
    random.Random(12).shuffle(targets)
    # Two "connections" (two Resources, two Redis clients) marking in random order at once.
    other = Resources.build(settings, Redis.from_url(settings.redis_url, decode_responses=True), res.keys)
    try:
        answers = await asyncio.gather(*(mark(res if i % 2 else other, rid, member, t) for i, t in enumerate(targets)))
    finally:
        await other.redis.aclose()
        await other.close()
    assert all(a["last_read_seq"] >= t for a, t in zip(answers, targets))
    assert (await state(res, rid, member))["last_read_seq"] == 50
    frames = await read_frames(feed, member)
    seen = [f["last_read_seq"] for f in frames]
    assert seen == sorted(seen) and len(set(seen)) == len(seen) and seen[-1] == 50  # only forward moves


async def test_counts_exact_after_a_thousand_messages_across_a_flush(res: Resources, settings: Settings,
                                                                     room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    me = await name_of(member)
    mentioning = set()
    for i in range(1, 1001):
        body = f"hello @{me} #{i}" if i % 7 == 0 else f"plain {i}"
        if i % 7 == 0:
            mentioning.add(i)
        await send(res.redis, res.keys, settings, rid, owner, body, rate_limit=False)
        if i == 500:
            await move_to_db(res.redis, res.keys, settings, rid, 500)
    assert await state(res, rid, member) == {"last_read_seq": 0, "unread_count": 1000,
                                              "mention_count": len(mentioning), "last_seq": 1000}
    got = await mark(res, rid, member, 400, username=me)
    assert got["unread_count"] == 600 and got["mention_count"] == len([m for m in mentioning if m > 400])
    # Pruned up to the marker.
    assert await res.redis.zcard(res.keys.room_mentions(rid, me)) == len([m for m in mentioning if m > 400])
    await move_to_db(res.redis, res.keys, settings, rid, 1000)
    assert (await Membership.get(room_id=rid, user_id=member)).last_read_seq == 400
    after = await state(res, rid, member)
    assert after == {"last_read_seq": 400, "unread_count": 600, "mention_count": got["mention_count"],
                     "last_seq": 1000}
    # A deleted message no longer counts as a mention; it still counts as unread.
    await lifecycle.delete_message(res, room_id=rid, seq=994, user_id=owner)
    again = await state(res, rid, member)
    assert (again["unread_count"], again["mention_count"]) == (600, got["mention_count"] - 1)
    # Another member's marker is their own.
    assert (await state(res, rid, owner))["unread_count"] == 0


async def test_counts_heal_from_postgresql_after_the_reads_hash_is_lost(res: Resources, settings: Settings,
                                                                        room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    for i in range(30):
        await send(res.redis, res.keys, settings, rid, owner, f"m{i}")
    await mark(res, rid, member, 20)
    await move_to_db(res.redis, res.keys, settings, rid, 30)
    await res.redis.delete(res.keys.room_reads(rid))
    assert (await state(res, rid, member))["last_read_seq"] == 20  # from memberships.last_read_seq
    assert await res.redis.hget(res.keys.room_reads(rid), member) == "20"  # written back
    await res.redis.delete(res.keys.room_reads(rid))
    # A mark below the PostgreSQL value does not move it back (the script asks for the floor).
    got = await mark(res, rid, member, 5)
    assert got["last_read_seq"] == 20 and got["unread_count"] == 10
    # Lost seq counter and member set: rebuilt as a send would.
    await res.redis.delete(res.keys.room_seq(rid), res.keys.room_members(rid))
    got = await mark(res, rid, member, 25)
    assert (got["last_read_seq"], got["unread_count"]) == (25, 5)


async def test_strangers_and_bad_input(res: Resources, settings: Settings, room: tuple[str, str, str],
                                       redis: Redis, keys: Keys) -> None:
    rid, owner, _ = room
    await send(res.redis, res.keys, settings, rid, owner, "m")
    stranger = await new_user()
    with pytest.raises(NotMember):
        await mark(res, rid, stranger, 1)
    private = await new_room(redis, keys, owner, is_private=True)
    with pytest.raises(RoomNotFound):
        await mark(res, private, stranger, 1)
    with pytest.raises(RoomNotFound):
        await mark(res, str(uuid.uuid4()), stranger, 1)
    with pytest.raises(ValidationFailed) as err:
        await mark(res, rid, owner, -1)
    assert "seq" in err.value.details["fields"]


async def test_hello_rooms_and_room_listing_carry_the_read_state(res: Resources, settings: Settings,
                                                                 room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    me = await name_of(member)
    for i in range(6):
        await send(res.redis, res.keys, settings, rid, owner, f"@{me} m{i}" if i < 2 else f"m{i}")
    await lifecycle.edit_message(res, room_id=rid, seq=6, user_id=owner, body="edited")
    await mark(res, rid, member, 1)
    other = await new_room(res.redis, res.keys, owner)  # not the member's
    pg = dict(await rooms.memberships_of_user(member))
    assert list(pg) == [rid]
    hello = await reads.hello_rooms(res, member, me, [rid], pg)
    assert hello == [{"room_id": rid, "last_seq": 6, "last_version": 1, "last_read_seq": 1, "unread_count": 5,
                      "mention_count": 1}]
    listed = await reads.with_read_state(res, member, None, [{"id": rid}, {"id": other}])
    assert listed == [{"id": rid, "last_seq": 6, "last_version": 1, "last_read_seq": 1, "unread_count": 5,
                       "mention_count": 1}, {"id": other}]


async def test_access_tokens_carry_the_lowercased_username(settings: Settings, redis: Redis, keys: Keys,
                                                          db: None) -> None:
    from app import auth, tokens

    name = f"Mixed{uuid.uuid4().hex[:8]}"
    await auth.register(settings, username=name, password="correct horse battery", display_name=None)
    pair = await auth.login(settings, username=name, password="correct horse battery")
    claims = await auth.check_access_token(settings, redis, keys, pair.access_token)
    assert claims.username == name.lower()
    again = await auth.refresh(settings, redis, keys, refresh_token=pair.refresh_token)
    assert (await auth.check_access_token(settings, redis, keys, again.access_token)).username == name.lower()
    # A token from before the claim: None, and the read service looks the name up instead.
    old, _ = tokens.issue(settings, user_id=claims.user_id, family_id=claims.family_id, kind=tokens.ACCESS)
    assert tokens.verify(settings, old, tokens.ACCESS).username is None
    assert await reads.username_of(claims.user_id, None) == name.lower()


async def test_direct_mode_keeps_markers_and_counts_in_postgresql(res: Resources, settings: Settings,
                                                                  room: tuple[str, str, str], feed: PubSub) -> None:
    rid, owner, member = room
    me = await name_of(member)
    direct = res.with_settings(settings.replace(write_mode="direct"))
    for i in range(1, 9):
        await send(res.redis, res.keys, direct.settings, rid, owner, f"@{me} {i}" if i in (3, 7) else f"m{i}")
    await read_frames(feed, member, 0.05)
    got = await reads.mark_read(direct, room_id=rid, user_id=member, username=None, seq=5)
    assert got == {"room_id": rid, "last_read_seq": 5, "unread_count": 3, "mention_count": 1}
    assert await reads.mark_read(direct, room_id=rid, user_id=member, username=me, seq=2) == got
    assert await read_frames(feed, member) == [{"type": "read", **got}]
    assert (await Membership.get(room_id=rid, user_id=member)).last_read_seq == 5
    hello = await reads.hello_rooms(direct, member, me, [rid], dict(await rooms.memberships_of_user(member)))
    assert hello == [{"room_id": rid, "last_seq": 8, "last_version": 0, "last_read_seq": 5, "unread_count": 3,
                      "mention_count": 1}]
    assert (await reads.hello_rooms(direct, owner, None, [rid], dict(await rooms.memberships_of_user(owner))))[0][
        "unread_count"] == 0  # the sends moved the sender's marker
    with pytest.raises(NotMember):
        await reads.mark_read(direct, room_id=rid, user_id=await new_user(), username=None, seq=1)
