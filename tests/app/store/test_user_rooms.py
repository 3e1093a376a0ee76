"""The per-user room list a WebSocket connect reads from Redis (app/store/user_rooms.py,
app/rooms.connect_rooms), on the real Redis and PostgreSQL: cached after one PostgreSQL read,
dropped by every membership change, never cached from a read that a change overtook, and the
hello built from it with PostgreSQL only for what Redis lacks."""

from __future__ import annotations

from redis.asyncio import Redis
from tortoise import connections

from app import membership, reads, rooms
from app.resources import Resources
from app.settings import Settings
from app.store import user_rooms
from app.store.keys import Keys
from tests.app.test_messages import new_room, new_user, send


async def connect(redis: Redis, keys: Keys, settings: Settings, user: str) -> tuple[list[str], bool]:
    """(the room ids a connect sees, whether it had to read PostgreSQL)."""
    revoked, ids, pg = await rooms.connect_rooms(redis, keys, settings, user_id=user, family_id="f-none")
    assert not revoked
    return ids, pg is not None


async def test_the_list_is_read_from_postgresql_once_then_from_redis(redis: Redis, keys: Keys, settings: Settings,
                                                                    db: None) -> None:
    owner = await new_user()
    first, second = await new_room(redis, keys, owner), await new_room(redis, keys, owner)
    assert await connect(redis, keys, settings, owner) == ([first, second], True)  # oldest membership first
    assert await connect(redis, keys, settings, owner) == ([first, second], False)
    ttl = await redis.pttl(keys.user_rooms(owner))
    assert 0 < ttl <= settings.user_rooms_ttl_s * 1000
    # No rooms at all is a list too (cached as empty, not re-read every time).
    loner = await new_user()
    assert await connect(redis, keys, settings, loner) == ([], True)
    assert await connect(redis, keys, settings, loner) == ([], False)


async def test_every_membership_change_is_in_the_next_connect(redis: Redis, keys: Keys, settings: Settings,
                                                              db: None) -> None:
    owner, user, other = await new_user(), await new_user(), await new_user()
    rid = await new_room(redis, keys, owner)
    assert await connect(redis, keys, settings, user) == ([], True)
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=user)
    assert await connect(redis, keys, settings, user) == ([rid], True)
    await membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=user)  # kick
    assert await connect(redis, keys, settings, user) == ([], True)
    await membership.add_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=user)
    assert await connect(redis, keys, settings, user) == ([rid], True)
    await membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=user, ban=True)
    assert await connect(redis, keys, settings, user) == ([], True)
    await membership.add_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=user)  # unban
    assert await connect(redis, keys, settings, user) == ([rid], True)
    await rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=user)
    assert await connect(redis, keys, settings, user) == ([], True)
    # A room created with members is in each member's list; deleting it leaves every list.
    from app.schemas import CreateRoom
    assert await connect(redis, keys, settings, other) == ([], True)
    made = await rooms.create_room(redis=redis, keys=keys, owner_id=owner,
                                   data=CreateRoom(name="with members", member_ids=[user, other]))
    assert await connect(redis, keys, settings, other) == ([made["id"]], True)
    assert (await connect(redis, keys, settings, user))[0] == [made["id"]]
    assert (await connect(redis, keys, settings, owner))[0] == [rid, made["id"]]
    await rooms.delete_room(redis=redis, keys=keys, room_id=made["id"], user_id=owner)
    for who, left in ((other, []), (user, []), (owner, [rid])):
        assert await connect(redis, keys, settings, who) == (left, True)


async def test_a_kick_that_overtakes_a_load_is_never_cached(redis: Redis, keys: Keys, settings: Settings,
                                                            db: None) -> None:
    owner, user = await new_user(), await new_user()
    rid = await new_room(redis, keys, owner)
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=user)
    # A connect's loader, step by step: the generation, then PostgreSQL (the room is listed) ...
    cached, gen = await user_rooms.read(redis, keys, user)
    assert cached is None
    stale = [r for r, _ in await rooms.memberships_of_user(user)]
    assert stale == [rid]
    # ... a kick commits and invalidates before the loader writes ...
    await membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=user)
    # ... so the write is refused, and the next connect reads PostgreSQL, which no longer lists it.
    assert not await user_rooms.store(redis, keys, user, gen, stale, settings.user_rooms_ttl_s)
    assert await redis.exists(keys.user_rooms(user)) == 0
    assert await connect(redis, keys, settings, user) == ([], True)
    # Without a change in between, the same sequence caches.
    cached, gen = await user_rooms.read(redis, keys, user)
    assert cached == []
    await redis.delete(keys.user_rooms(user))
    cached, gen = await user_rooms.read(redis, keys, user)
    assert await user_rooms.store(redis, keys, user, gen, [], settings.user_rooms_ttl_s)


async def test_a_logged_out_family_is_told_in_the_same_round_trip(redis: Redis, keys: Keys, settings: Settings,
                                                                  db: None) -> None:
    user = await new_user()
    await redis.set(keys.revoked_family("fam-1"), "1", ex=60)
    assert await rooms.connect_rooms(redis, keys, settings, user_id=user, family_id="fam-1") == (True, [], None)


async def test_hello_from_the_cached_list_reads_postgresql_only_for_a_marker_redis_lacks(
        res: Resources, settings: Settings) -> None:
    redis, keys = res.redis, res.keys
    owner, user = await new_user(), await new_user()
    rid = await new_room(redis, keys, owner)
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=user)
    for i in range(5):
        await send(redis, keys, settings, rid, owner, f"m{i}")
    await reads.mark_read(res, room_id=rid, user_id=user, username=None, seq=2)
    want = {"room_id": rid, "last_seq": 5, "last_read_seq": 2, "unread_count": 3, "mention_count": 0}
    hello = (await reads.hello_rooms(res, user, None, [rid], None))[0]
    assert {k: hello[k] for k in want} == want and hello["last_version"] == 0
    # Redis lost the marker (and the counters); PostgreSQL holds a flushed one: it is the answer.
    await connections.get("default").execute_query(
        "UPDATE memberships SET last_read_seq = 4 WHERE room_id = $1 AND user_id = $2", [rid, user])
    await redis.hdel(keys.room_reads(rid), user)
    await redis.delete(keys.room_version(rid))
    hello = (await reads.hello_rooms(res, user, None, [rid], None))[0]
    assert hello == {**want, "last_read_seq": 4, "unread_count": 1, "last_version": 0}
    assert await redis.hget(keys.room_reads(rid), user) == "4"  # written back: the next hello needs no PostgreSQL
    assert await redis.get(keys.room_version(rid)) == "0"
