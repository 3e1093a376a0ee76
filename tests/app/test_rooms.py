"""The room service against real PostgreSQL and Redis: rules, ownership hand-over, races, cache and events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from app import access, membership, rooms
from app.realtime import events
from app.store import member_sets
from app.errors import (Banned, Forbidden, NotMember, NotMemberOfRoom, RoomNotFound, UserNotFound,
                        ValidationFailed)
from app.store.keys import Keys
from app.schemas import CreateRoom, UpdateRoom
from app.serialize import loads
from app.validation import parse
from models.room import Membership, Room
from models.user import User


async def new_user(name: str = "u") -> str:
    username = f"{name}{uuid.uuid4().hex[:10]}"
    user = await User.create(username=username, username_lower=username.lower(), display_name=username,
                             password_hash="not-a-hash")
    return str(user.id)


async def new_room(redis: Redis, keys: Keys, owner: str, **fields: Any) -> dict[str, Any]:
    data = CreateRoom(name=fields.pop("name", f"room {uuid.uuid4().hex[:6]}"), **fields)
    return await rooms.create_room(redis=redis, keys=keys, owner_id=owner, data=data)


@pytest.fixture
async def feed(redis: Redis, keys: Keys, db: None) -> AsyncIterator[PubSub]:
    """A subscription to the fan-out channel, opened before the test acts."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events_channel())
    await pubsub.get_message(timeout=5)  # the subscribe confirmation
    yield pubsub
    await pubsub.unsubscribe()
    await pubsub.aclose()


def unversioned(route: str) -> str:
    """A join/leave route without its membership version (j:<room>:<user>:<version>)."""
    if route[:2] in ("j:", "l:"):
        kind_room_user, _, version = route.rpartition(":")
        assert int(version) > 0, route  # every join and leave carries its version
        return kind_room_user
    return route


async def routes_until(pubsub: PubSub, wanted: str) -> list[tuple[str, dict[str, Any]]]:
    """Read events up to and including the one on route `wanted`; fail if it never comes."""
    seen: list[tuple[str, dict[str, Any]]] = []
    for _ in range(200):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert msg is not None, f"no event on {wanted}; saw {[r for r, _ in seen]}"
        route, _, frame = events.decode(msg["data"])
        route = unversioned(route)
        seen.append((route, loads(frame)))
        if route == wanted:
            return seen
    raise AssertionError(f"no event on {wanted}")


# -- validation --------------------------------------------------------------------

@pytest.mark.parametrize("data,field", [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "   "}, "name"), ({"name": "x" * 65}, "name"),
    ({"name": "a\nb"}, "name"), ({"name": 5}, "name"), ({"name": "ok", "topic": "t" * 257}, "topic"),
    ({"name": "ok", "is_private": "yes"}, "is_private"), ({"name": "ok", "member_ids": "abc"}, "member_ids"),
])
def test_create_room_validation(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse(CreateRoom, data)
    assert field in err.value.details["fields"]


def test_create_room_accepts_limits_and_ignores_frame_keys() -> None:
    data = parse(CreateRoom, {"type": "create_room", "client_id": "c1", "name": " " + "x" * 64 + " ",
                              "topic": None})
    assert data.name == "x" * 64 and data.topic == "" and data.is_private is False and data.member_ids == []


def test_update_room_rejects_null_name_and_keeps_absent_fields_absent() -> None:
    with pytest.raises(ValidationFailed) as err:
        parse(UpdateRoom, {"name": None})
    assert "name" in err.value.details["fields"]
    assert parse(UpdateRoom, {"topic": "new"}).model_fields_set == {"topic"}


# -- create ------------------------------------------------------------------------

async def test_create_room_member_sets_and_events(redis: Redis, keys: Keys, feed: PubSub) -> None:
    owner, a, b = await new_user(), await new_user(), await new_user()
    room = await new_room(redis, keys, owner, topic="hello", is_private=True, member_ids=[a, b, a, owner])
    rid = room["id"]
    assert room["owner_id"] == owner and room["my_role"] == "owner" and room["member_count"] == 3
    assert room["topic"] == "hello" and room["is_private"] is True and room["created_at"].endswith("Z")
    assert sorted(await rooms.member_ids(rid)) == sorted([owner, a, b])
    for uid in (owner, a, b):
        assert await member_sets.is_member(redis, keys, rid, uid) is True
    assert await redis.get(keys.room_seq(rid)) == "0"
    seen = dict(await routes_until(feed, f"j:{rid}:{b}"))
    assert {f"j:{rid}:{owner}", f"j:{rid}:{a}"} <= set(seen)
    frame = seen[f"j:{rid}:{b}"]
    assert frame["type"] == "member_joined" and frame["membership"]["role"] == "member"
    assert frame["membership"]["user_id"] == b and frame["membership"]["username"]


async def test_create_room_with_unknown_member_creates_nothing(redis: Redis, keys: Keys, db: None) -> None:
    owner = await new_user()
    name = f"ghost {uuid.uuid4().hex[:6]}"
    for bad in (str(uuid.uuid4()), "not-an-id"):
        with pytest.raises(UserNotFound):
            await new_room(redis, keys, owner, name=name, member_ids=[bad])
    assert not await Room.filter(name=name).exists()


# -- join / leave ------------------------------------------------------------------

async def test_join_rules(redis: Redis, keys: Keys, db: None) -> None:
    owner, joiner = await new_user(), await new_user()
    public = (await new_room(redis, keys, owner))["id"]
    private = (await new_room(redis, keys, owner, is_private=True))["id"]
    m = await rooms.join_room(redis=redis, keys=keys, room_id=public, user_id=joiner)
    assert m["role"] == "member" and m["room_id"] == public and m["user_id"] == joiner
    again = await rooms.join_room(redis=redis, keys=keys, room_id=public, user_id=joiner)
    assert again == m
    assert await member_sets.is_member(redis, keys, public, joiner) is True
    for rid in (private, str(uuid.uuid4()), "garbage"):
        with pytest.raises(RoomNotFound):
            await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=joiner)
    # A member of a private room joining again is as harmless as anywhere else.
    assert (await rooms.join_room(redis=redis, keys=keys, room_id=private, user_id=owner))["role"] == "owner"


async def test_banned_user_cannot_rejoin_until_re_added(redis: Redis, keys: Keys, db: None) -> None:
    owner, troll = await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner))["id"]
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=troll)
    await membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=troll, ban=True)
    assert await member_sets.is_member(redis, keys, rid, troll) is False
    assert troll not in await rooms.member_ids(rid)
    with pytest.raises(Banned):
        await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=troll)
    with pytest.raises(NotMember):
        await rooms.require_member(room_id=rid, user_id=troll)
    m, created = await membership.add_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=troll)
    assert created and m["role"] == "member"
    assert await member_sets.is_member(redis, keys, rid, troll) is True
    assert (await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=troll))["user_id"] == troll


async def test_leave_hands_ownership_to_oldest_admin_then_oldest_member(redis: Redis, keys: Keys, feed: PubSub) -> None:
    owner, m1, m2, a1, a2 = [await new_user() for _ in range(5)]
    rid = (await new_room(redis, keys, owner))["id"]
    for uid in (m1, m2, a1, a2):
        await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=uid)
    for uid in (a2, a1):  # promotion order must not matter: join order does
        await membership.change_role(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=uid, role="admin")

    await rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=owner)
    room = await Room.get(id=rid)
    assert str(room.owner_id) == a1
    assert (await rooms.get_room(room_id=rid, user_id=a1))["my_role"] == "owner"
    left = dict(await routes_until(feed, f"l:{rid}:{owner}"))  # after the promotions' events
    assert left[f"l:{rid}:{owner}"] == {"type": "member_left", "room_id": rid, "user_id": owner}
    seen = dict(await routes_until(feed, f"u:{a1}"))
    assert seen[f"r:{rid}"]["type"] == "room_updated" and seen[f"r:{rid}"]["room"]["owner_id"] == a1
    assert seen[f"r:{rid}"]["room"]["my_role"] is None
    assert seen[f"u:{a1}"]["room"]["my_role"] == "owner"

    await rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=a1)
    assert str((await Room.get(id=rid)).owner_id) == a2
    await rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=a2)
    assert str((await Room.get(id=rid)).owner_id) == m1  # no admin left: the oldest member
    assert sorted(await rooms.member_ids(rid)) == sorted([m1, m2])


async def test_last_one_out_deletes_the_room_and_its_cache(redis: Redis, keys: Keys, feed: PubSub) -> None:
    owner, other = await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner))["id"]
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=other)
    await membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=other, ban=True)
    # Pretend messages are cached and waiting for the worker.
    await redis.xadd(keys.room_log(rid), {"m": "{}"}, id="1-0")
    await redis.set(keys.room_flushed(rid), 0)
    await redis.sadd(keys.pending_rooms(), rid)

    await rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=owner)
    assert not await Room.filter(id=rid).exists()
    assert not await Membership.filter(room_id=rid).exists()  # the ban row went with it
    for key in (keys.room_log(rid), keys.room_seq(rid), keys.room_flushed(rid), keys.room_members(rid)):
        assert not await redis.exists(key), key
    assert not await redis.sismember(keys.pending_rooms(), rid)
    seen = dict(await routes_until(feed, f"d:{rid}"))
    assert seen[f"d:{rid}"] == {"type": "room_deleted", "room_id": rid}


async def test_leave_errors(redis: Redis, keys: Keys, db: None) -> None:
    owner, outsider = await new_user(), await new_user()
    public = (await new_room(redis, keys, owner))["id"]
    private = (await new_room(redis, keys, owner, is_private=True))["id"]
    with pytest.raises(NotMemberOfRoom):
        await rooms.leave_room(redis=redis, keys=keys, room_id=public, user_id=outsider)
    for rid in (private, str(uuid.uuid4()), "x"):
        with pytest.raises(RoomNotFound):
            await rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=outsider)


async def test_concurrent_leaves_of_the_last_two_delete_the_room_once(redis: Redis, keys: Keys, db: None) -> None:
    owner, other = await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner))["id"]
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=other)
    await asyncio.gather(*(rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=u) for u in (owner, other)))
    assert not await Room.filter(id=rid).exists()


async def test_concurrent_joins_all_land(redis: Redis, keys: Keys, db: None) -> None:
    owner = await new_user()
    users = [await new_user() for _ in range(8)]
    rid = (await new_room(redis, keys, owner))["id"]
    calls = [rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=u) for u in users + users]
    await asyncio.gather(*calls)
    assert sorted(await rooms.member_ids(rid)) == sorted([owner, *users])
    assert (await rooms.get_room(room_id=rid, user_id=owner))["member_count"] == 9
    assert await redis.scard(keys.room_members(rid)) == 10  # nine members and the "loaded" sentinel


# -- access ------------------------------------------------------------------------

async def test_require_member_hides_private_rooms(redis: Redis, keys: Keys, db: None) -> None:
    owner, outsider = await new_user(), await new_user()
    public = (await new_room(redis, keys, owner))["id"]
    private = (await new_room(redis, keys, owner, is_private=True))["id"]
    assert str((await rooms.require_member(room_id=private, user_id=owner)).id) == private
    with pytest.raises(NotMember):
        await rooms.require_member(room_id=public, user_id=outsider)
    for rid in (private, str(uuid.uuid4()), "%%"):
        with pytest.raises(RoomNotFound):
            await rooms.require_member(room_id=rid, user_id=outsider)
        with pytest.raises(RoomNotFound):
            await rooms.get_room(room_id=rid, user_id=outsider)
    assert (await rooms.get_room(room_id=public, user_id=outsider))["my_role"] is None


async def test_member_ids_and_room_ids_of_user(redis: Redis, keys: Keys, db: None) -> None:
    owner, user = await new_user(), await new_user()
    first = (await new_room(redis, keys, owner, member_ids=[user]))["id"]
    second = (await new_room(redis, keys, user))["id"]
    banned = (await new_room(redis, keys, owner, member_ids=[user]))["id"]
    await membership.remove_member(redis=redis, keys=keys, room_id=banned, actor_id=owner, user_id=user, ban=True)
    assert await rooms.room_ids_of_user(user) == [first, second]
    assert await rooms.member_ids(banned) == [owner]
    assert await rooms.member_ids(str(uuid.uuid4())) == [] and await rooms.member_ids("bad") == []


async def test_update_room_roles_and_event(redis: Redis, keys: Keys, feed: PubSub) -> None:
    owner, admin, member = await new_user(), await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner, member_ids=[admin, member]))["id"]
    await membership.change_role(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=admin, role="admin")
    with pytest.raises(Forbidden):
        await rooms.update_room(redis=redis, keys=keys, room_id=rid, user_id=member, data=UpdateRoom(name="no"))
    out = await rooms.update_room(redis=redis, keys=keys, room_id=rid, user_id=admin,
                                  data=UpdateRoom(name="renamed", is_private=True))
    assert out["name"] == "renamed" and out["is_private"] is True and out["my_role"] == "admin"
    seen = await routes_until(feed, f"r:{rid}")
    while seen[-1][1]["room"]["name"] != "renamed":  # the role change published one first
        seen = await routes_until(feed, f"r:{rid}")
    assert seen[-1][1]["room"]["my_role"] is None and seen[-1][1]["room"]["is_private"] is True


# -- ordering of membership changes (membership versions) ------------------------------

async def _version_of(redis: Redis, keys: Keys, rid: str, uid: str) -> int:
    return int(await redis.hget(keys.room_mvers(rid), uid) or 0)


async def test_a_late_join_update_cannot_undo_a_ban(redis: Redis, keys: Keys, db: None) -> None:
    owner, user = await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner))["id"]
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=user)
    join_version = await _version_of(redis, keys, rid, user)
    assert join_version > 0
    await membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=user, ban=True)
    assert await _version_of(redis, keys, rid, user) == -(join_version + 1)  # the next version, as a removal
    # The join's SADD arriving after the ban (the reproduction) is refused as stale.
    assert await member_sets.apply(redis, keys, rid, user, join_version, True) == 0
    assert await member_sets.is_member(redis, keys, rid, user) is False
    assert await rooms.member_ids(rid) == [owner]


async def test_a_rebuild_does_not_resurrect_a_member_removed_meanwhile(redis: Redis, keys: Keys, db: None) -> None:
    owner, kicked, late = await new_user(), await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner, member_ids=[kicked]))["id"]
    await redis.delete(keys.room_members(rid))  # Redis lost the set
    snap = await access.member_snapshot(redis, keys, rid)  # a rebuild read PostgreSQL...
    assert snap is not None and sorted(snap[1]) == sorted([owner, kicked])
    # ...and before it writes, a kick and a join commit and apply (the set is still missing)
    await membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=kicked)
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=late)
    assert await member_sets.is_member(redis, keys, rid, owner) is None
    await member_sets.load(redis, keys, rid, snap[1], snap[0])
    assert await member_sets.is_member(redis, keys, rid, kicked) is False
    assert await member_sets.is_member(redis, keys, rid, late) is True
    assert await member_sets.is_member(redis, keys, rid, owner) is True


async def test_recheck_heals_a_stale_set_and_caches_a_refusal(redis: Redis, keys: Keys, db: None) -> None:
    owner, member, outsider = await new_user(), await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner, member_ids=[member]))["id"]
    await redis.srem(keys.room_members(rid), member)  # a set that went stale
    assert await access.authorize(redis, keys, rid, member) == rid  # PostgreSQL says member: healed
    assert await member_sets.is_member(redis, keys, rid, member) is True
    with pytest.raises(NotMember):
        await access.authorize(redis, keys, rid, outsider)
    assert await redis.get(keys.room_denied(rid, outsider)) == "403"
    assert 0 < await redis.ttl(keys.room_denied(rid, outsider)) <= member_sets.DENIED_TTL_S
    # While cached, PostgreSQL is not asked: even a membership written behind the service's
    # back (no version, no Redis update) is not seen until the answer expires.
    await Membership.create(room_id=rid, user_id=outsider, role="member")
    with pytest.raises(NotMember):
        await access.authorize(redis, keys, rid, outsider)
    await Membership.filter(room_id=rid, user_id=outsider).delete()
    # A real join clears the cached refusal at once.
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=outsider)
    assert await redis.get(keys.room_denied(rid, outsider)) is None
    assert await access.authorize(redis, keys, rid, outsider) == rid
    ghost = str(uuid.uuid4())
    with pytest.raises(RoomNotFound):
        await access.authorize(redis, keys, ghost, outsider)
    assert await redis.exists(keys.room_gone(ghost))


async def test_reconcile_repairs_sets_without_overriding_newer_changes(redis: Redis, keys: Keys, db: None) -> None:
    owner, dropped, intruder, racing = await new_user(), await new_user(), await new_user(), await new_user()
    rid = (await new_room(redis, keys, owner, member_ids=[dropped]))["id"]
    await redis.srem(keys.room_members(rid), dropped)  # lost an add
    await redis.sadd(keys.room_members(rid), intruder)  # missed a removal
    # A change newer than anything the reconcile's snapshot can see (it lands after the read):
    future = await member_sets.snapshot_version(redis, keys, rid) + 1000
    await member_sets.apply(redis, keys, rid, racing, future, True)
    stats = await membership.reconcile_all(redis=redis, keys=keys, batch=7)  # several pages
    assert stats["checked"] >= 1 and stats["added"] >= 1 and stats["removed"] >= 1
    assert await member_sets.is_member(redis, keys, rid, dropped) is True
    assert await member_sets.is_member(redis, keys, rid, intruder) is False
    assert await member_sets.is_member(redis, keys, rid, racing) is True  # left alone
    again = await membership.reconcile_all(redis=redis, keys=keys)
    assert again["rooms"] >= 1


async def test_a_join_racing_a_room_delete_leaves_nothing_behind(redis: Redis, keys: Keys, db: None) -> None:
    outcomes = {"joined_first": 0, "deleted_first": 0}
    for _ in range(15):
        owner, joiner = await new_user(), await new_user()
        rid = (await new_room(redis, keys, owner))["id"]
        join, delete = await asyncio.gather(
            rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=joiner),
            rooms.delete_room(redis=redis, keys=keys, room_id=rid, user_id=owner), return_exceptions=True)
        assert delete is None, delete
        if isinstance(join, BaseException):
            assert isinstance(join, (RoomNotFound, NotMemberOfRoom)), join
            outcomes["deleted_first"] += 1
        else:
            outcomes["joined_first"] += 1
        assert not await Room.filter(id=rid).exists()
        assert not await Membership.filter(room_id=rid).exists()
        for key in (keys.room_members(rid), keys.room_mver(rid), keys.room_mvers(rid)):
            assert not await redis.exists(key), key  # a late join update cannot recreate them
        with pytest.raises(RoomNotFound):
            await access.authorize(redis, keys, rid, joiner)
    print("join vs delete:", outcomes)


async def test_two_ownership_hand_overs_at_once_leave_exactly_one_owner(redis: Redis, keys: Keys, db: None) -> None:
    for _ in range(10):
        owner, first, second, third = [await new_user() for _ in range(4)]
        rid = (await new_room(redis, keys, owner))["id"]
        for uid in (first, second, third):
            await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=uid)
        # The owner leaves (hand-over to `first`) while `first` leaves too (maybe as the new owner:
        # a second hand-over, to `second`). The row lock runs them one after the other.
        res = await asyncio.gather(rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=owner),
                                   rooms.leave_room(redis=redis, keys=keys, room_id=rid, user_id=first),
                                   return_exceptions=True)
        assert res == [None, None], res
        owners = await Membership.filter(room_id=rid, role="owner").values_list("user_id", flat=True)
        assert [str(u) for u in owners] == [second]
        assert str((await Room.get(id=rid)).owner_id) == second
        assert sorted(await rooms.member_ids(rid)) == sorted([second, third])
        for uid, expected in ((owner, False), (first, False), (second, True), (third, True)):
            assert await member_sets.is_member(redis, keys, rid, uid) is expected


async def test_room_creation_and_joins_are_limited_per_user(redis: Redis, keys: Keys, db: None,
                                                          settings: Any) -> None:
    from app.errors import RateLimited

    strict = settings.replace(rate_rooms=2, rate_rooms_window_s=60, rate_joins=2, rate_joins_window_s=60)
    owner, joiner = await new_user(), await new_user()
    made = [await rooms.create_room(redis=redis, keys=keys, owner_id=owner, settings=strict,
                                    data=CreateRoom(name=f"r{i}")) for i in range(2)]
    before = await Room.filter(owner_id=owner).count()
    with pytest.raises(RateLimited) as info:
        await rooms.create_room(redis=redis, keys=keys, owner_id=owner, settings=strict, data=CreateRoom(name="r3"))
    assert info.value.status == 429 and 1 <= info.value.details["retry_after"] <= 60
    assert await Room.filter(owner_id=owner).count() == before == 2  # refused before PostgreSQL
    for room in made:
        await rooms.join_room(redis=redis, keys=keys, room_id=room["id"], user_id=joiner, settings=strict)
    with pytest.raises(RateLimited):
        await rooms.join_room(redis=redis, keys=keys, room_id=made[0]["id"], user_id=joiner, settings=strict)
    # member adds count against the actor's joins
    for _ in range(2):
        await membership.add_member(redis=redis, keys=keys, room_id=made[0]["id"], actor_id=owner,
                                    user_id=await new_user(), settings=strict)
    with pytest.raises(RateLimited):
        await membership.add_member(redis=redis, keys=keys, room_id=made[0]["id"], actor_id=owner,
                                    user_id=await new_user(), settings=strict)


async def test_a_rebuild_racing_a_kick_never_lets_the_kicked_user_back(redis: Redis, keys: Keys, db: None,
                                                                      resources: Any) -> None:
    from app import messages
    from app.errors import ChatError

    sent_after = rounds = 0
    for _ in range(30):
        owner, user = await new_user(), await new_user()
        rid = (await new_room(redis, keys, owner, member_ids=[user]))["id"]
        await redis.delete(keys.room_members(rid))  # Redis lost the set: the next send rebuilds it
        send = messages.accept_message(resources, room_id=rid, sender_id=user, body="racing")
        kick = membership.remove_member(redis=redis, keys=keys, room_id=rid, actor_id=owner, user_id=user)
        res = await asyncio.gather(send, kick, return_exceptions=True)
        assert res[1] is None, res[1]
        assert not isinstance(res[0], BaseException) or isinstance(res[0], ChatError), res[0]
        rounds += 1
        assert await member_sets.is_member(redis, keys, rid, user) is False
        try:
            await messages.accept_message(resources, room_id=rid, sender_id=user, body="after the kick")
            sent_after += 1
        except NotMember:
            pass
    assert (rounds, sent_after) == (30, 0)
