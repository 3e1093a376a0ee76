"""Rooms: create, list, read, update, delete, join and leave; who may see what; rendering.

The rules are API.md's "Rooms and membership". A private room that the caller
is not a member of behaves exactly like a missing one (404 room_not_found);
a public room answers 403 not_member on member-only calls. Managing other
people's memberships (list, add, role, kick/ban) is in app/membership.py.

Every change commits in one PostgreSQL transaction that locks the room row,
so joins, leaves, ownership hand-over and deletion of one room are serialized.
While it holds the lock, a membership change takes a membership version
(app/store/member_sets.py): the Redis member set and the live connections apply a
change only when its version is newer than the last one they applied for that
user, so updates that arrive late or out of order cannot undo a later change.
Removals leave the Redis set before the commit, under the lock (a rollback then
only costs the user one PostgreSQL recheck on their next send); additions land
after the commit (a crash then costs the same recheck, never a ban undone). The
live event is published after the commit, never from a blueprint (Zulip's
send_event_on_commit).

Per-user limits on room creation and joins are checked in Redis before any
PostgreSQL work.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Iterable, NoReturn

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import Q, Subquery
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from app.realtime import events
from app.store import member_sets, ratelimit, user_rooms
from app.errors import (Banned, Forbidden, NotMember, NotMemberOfRoom, RateLimited, RoomNotFound,
                        UserNotFound, ValidationFailed)
from app.store.keys import Keys
from app.ids import canonical_uuid, parse_uuid
from app.pagination import ROOMS, decode_cursor, page
from app.schemas import CreateRoom, UpdateRoom, membership_out, room_out
from app.settings import Settings
from app.validation import check_text
from models.room import Membership, Role, Room
from models.user import User

log = logging.getLogger("chat.rooms")

# -- access, rendering ------------------------------------------------------

def deny(room: Room) -> NoReturn:
    """A non-member asked for something members only may do: hide private rooms."""
    if room.is_private:
        raise RoomNotFound()
    raise NotMember()


async def role_in(room_id: str, user_id: str, conn: BaseDBAsyncClient | None = None) -> Role | None:
    """The user's role in the room, None when not a member (banned counts as not a member)."""
    qs = Membership.filter(room_id=room_id, user_id=user_id, banned=False)
    if conn is not None:
        qs = qs.using_db(conn)
    m = await qs.first()
    return Role(m.role) if m is not None else None


async def locked_room(conn: BaseDBAsyncClient, room_id: str, *, for_delete: bool = False) -> Room:
    """Lock the room row for this transaction (404 when missing).

    FOR NO KEY UPDATE serializes membership changes of the room without blocking
    inserts elsewhere that reference it (the worker flushing messages); deleting
    the room needs the full FOR UPDATE.
    """
    room = await Room.filter(id=room_id).using_db(conn).select_for_update(no_key=not for_delete).first()
    if room is None:
        raise RoomNotFound()
    return room


def require_role(room: Room, role: Role | None, allowed: Iterable[Role], action: str) -> None:
    """404/403 not_member for outsiders, 403 forbidden for members without the right role."""
    if role is None:
        deny(room)
    if role not in allowed:
        raise Forbidden(f"Only the {' or '.join(r.value for r in allowed)} can {action}.")


async def render_rooms(rooms: list[Room], viewer_id: str | None) -> list[dict[str, Any]]:
    """Render rooms with two queries in all (member counts, the viewer's roles)."""
    if not rooms:
        return []
    ids = [r.id for r in rooms]
    counted = (await Membership.filter(room_id__in=ids, banned=False).annotate(n=Count("id"))
               .group_by("room_id").values_list("room_id", "n"))
    counts = {str(rid): n for rid, n in counted}
    roles: dict[str, str] = {}
    if viewer_id is not None:
        mine = await Membership.filter(room_id__in=ids, user_id=viewer_id, banned=False).values_list("room_id", "role")
        roles = {str(rid): Role(role).value for rid, role in mine}
    return [room_out(r, counts.get(str(r.id), 0), roles.get(str(r.id))) for r in rooms]


async def render_room(room: Room, viewer_id: str | None) -> dict[str, Any]:
    """The API's room object; `my_role` is the viewer's (null for viewer None: broadcasts)."""
    return (await render_rooms([room], viewer_id))[0]


async def load_membership(room_id: str, user_id: str) -> Membership | None:
    return await Membership.filter(room_id=room_id, user_id=user_id).select_related("user").first()


# -- after-commit steps (PostgreSQL already holds the truth) ------------------------

async def cache_step(redis: Redis, keys: Keys, room_id: str, step: Awaitable[None]) -> None:
    """Update the Redis member set; if Redis fails, drop the set so it is rebuilt from PostgreSQL."""
    try:
        await step
    except RedisError:
        log.warning("member set of room %s not updated; dropping it for a rebuild", room_id, exc_info=True)
        try:
            await redis.delete(keys.room_members(room_id))
        except RedisError:
            log.error("member set of room %s may be stale until Redis recovers", room_id)


async def publish(step: Awaitable[None]) -> None:
    """Publish a live event. The change is committed, so a Redis failure is logged, not raised."""
    try:
        await step
    except RedisError:
        log.warning("live event not published", exc_info=True)


async def rooms_changed(redis: Redis, keys: Keys, user_ids: Iterable[str]) -> None:
    """After a membership commit: the users' cached room lists go (app/store/user_rooms.py),
    before the event is published, so a connect that sees the event reads the new list. A
    Redis failure is logged: the stale list expires within USER_ROOMS_TTL_S."""
    try:
        await user_rooms.bump(redis, keys, user_ids)
    except RedisError:
        log.warning("cached room lists not invalidated; they expire on their TTL", exc_info=True)


async def publish_room_updated(redis: Redis, keys: Keys, room: Room,
                               personal: dict[str, str] | None = None) -> None:
    """room_updated to the room with my_role null (it differs per viewer); users whose role
    changed (`personal`: user id -> role) also get one with their own my_role."""
    out = await render_room(room, None)
    await publish(events.to_room(redis, keys, str(room.id), {"type": "room_updated", "room": out}))
    for user_id, role in (personal or {}).items():
        await publish(events.to_user(redis, keys, user_id, {"type": "room_updated", "room": {**out, "my_role": role}}))


async def rate_check(redis: Redis, keys: Keys, settings: Settings | None, bucket: str,
                     user_id: str) -> None:
    """A per-user limit (rooms created, joins), in Redis before any PostgreSQL work; None = no limit."""
    if settings is None:
        return
    rule = {"rooms": (settings.rate_rooms, settings.rate_rooms_window_s),
            "joins": (settings.rate_joins, settings.rate_joins_window_s)}[bucket]
    wait = await ratelimit.hit(redis, keys.rate(bucket, user_id), *rule)
    if wait:
        raise RateLimited(wait)


async def version_locked(redis: Redis, keys: Keys, room_id: str) -> int:
    """A membership version for a change of this room; the caller holds the room row lock."""
    return await member_sets.next_version(redis, keys, room_id)


async def remove_locked(redis: Redis, keys: Keys, room_id: str, user_id: str) -> int:
    """Under the room row lock, just before the commit: take a version and leave the Redis set.

    Before the commit, so no send can pass the Redis check once the removal is committed.
    """
    version = await version_locked(redis, keys, room_id)
    await cache_step(redis, keys, room_id, _applied(member_sets.apply(redis, keys, room_id, user_id, version, False)))
    return version


async def _applied(step: Awaitable[int]) -> None:
    await step


async def announce_join(redis: Redis, keys: Keys, m: Membership, version: int) -> None:
    """After a membership commit: the user joins the Redis set, then their sockets attach."""
    room_id, user_id = str(m.room_id), str(m.user_id)
    await cache_step(redis, keys, room_id, _applied(member_sets.apply(redis, keys, room_id, user_id, version, True)))
    await rooms_changed(redis, keys, (user_id,))
    frame = {"type": "member_joined", "membership": membership_out(m)}
    await publish(events.member_joined(redis, keys, room_id, user_id, frame, version,
                                       await _seq_at_join(redis, keys, room_id)))


async def _seq_at_join(redis: Redis, keys: Keys, room_id: str) -> int | None:
    """FANOUT_CHANNELS=rooms: the room's last seq after the join committed, carried by the join
    event, so a process that subscribes to the room only now catches up from there (read after
    the member set has the user: every later message is one the joiner may see). None: not
    needed (global channel) or unknown (no catch-up then; the client's sync covers it)."""
    if not keys.fanout_rooms:
        return None
    try:
        value = await redis.get(keys.room_seq(room_id))
    except RedisError:
        return None
    return int(value) if value is not None else None


async def announce_leave(redis: Redis, keys: Keys, room_id: str, user_id: str, version: int) -> None:
    """After a leave/kick/ban commit (the set was updated under the lock): their sockets detach."""
    await rooms_changed(redis, keys, (user_id,))
    frame = {"type": "member_left", "room_id": room_id, "user_id": user_id}
    await publish(events.member_left(redis, keys, room_id, user_id, frame, version))


async def forget_room(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str] = ()) -> None:
    """After a room's deletion commit: drop its member set and message cache (and the cached
    room lists of `member_ids`, its members at the deletion), tell its sockets.

    Idempotency keys (`cid:*`) are not enumerable without SCAN; they expire on their TTL.
    The flush lease belongs to whichever worker holds it and expires on its own.
    """
    await cache_step(redis, keys, room_id, member_sets.room_deleted(redis, keys, room_id))
    try:
        # The lifecycle keys too: the flush's "log missing" branch keeps a room pending while
        # `changed` or `rdirty` hold something, so they must not outlive the room.
        await redis.delete(keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id),
                           keys.room_flush_queued(room_id), keys.room_version(room_id), keys.room_state(room_id),
                           keys.room_changed(room_id), keys.room_reads(room_id), keys.room_reads_dirty(room_id))
        await redis.srem(keys.pending_set(room_id), room_id)
    except RedisError:
        log.warning("message cache of deleted room %s not dropped", room_id, exc_info=True)
    await rooms_changed(redis, keys, member_ids)
    await publish(events.room_deleted(redis, keys, room_id))


# -- rooms ---------------------------------------------------------------------------

async def create_room(*, redis: Redis, keys: Keys, owner_id: str, data: CreateRoom,
                      settings: Settings | None = None) -> dict[str, Any]:
    """Create a room owned by `owner_id` with `data.member_ids` as members; the owner's view of it."""
    await rate_check(redis, keys, settings, "rooms", owner_id)
    others: list[str] = []
    seen = {owner_id}
    for raw in data.member_ids:
        uid = parse_uuid(raw, UserNotFound)
        if uid not in seen:
            seen.add(uid)
            others.append(uid)
    async with in_transaction() as conn:
        if others:
            found = {str(u) for u in await User.filter(id__in=others).using_db(conn).values_list("id", flat=True)}
            missing = [u for u in others if u not in found]
            if missing:
                raise UserNotFound(details={"user_id": missing[0]})
        room = await Room.create(name=data.name, topic=data.topic, is_private=data.is_private,
                                 owner_id=owner_id, using_db=conn)
        rows = [Membership(room_id=room.id, user_id=owner_id, role=Role.OWNER)]
        rows += [Membership(room_id=room.id, user_id=u, role=Role.MEMBER) for u in others]
        await Membership.bulk_create(rows, using_db=conn)
        version = await version_locked(redis, keys, str(room.id))
    room_id = str(room.id)
    await cache_step(redis, keys, room_id,
                     member_sets.room_created(redis, keys, room_id, [owner_id, *others], version))
    await rooms_changed(redis, keys, [owner_id, *others])
    for m in await Membership.filter(room_id=room_id).select_related("user").order_by("id"):
        frame = {"type": "member_joined", "membership": membership_out(m)}
        # a new room: every message is after the join (seq 0)
        await publish(events.member_joined(redis, keys, room_id, str(m.user_id), frame, version, 0))
    return room_out(room, 1 + len(others), Role.OWNER.value)


async def list_rooms(*, user_id: str, scope: str = "joined", q: str = "", limit: int = 50,
                     cursor: str | None = None) -> dict[str, Any]:
    """A page of the rooms the user is in (`joined`) or of all public rooms (`public`), newest first."""
    if scope not in ("joined", "public"):
        raise ValidationFailed({"scope": "must be joined or public"})
    check_text({"q": q})  # the door's rule (app/door.py applies it to every query string first)
    after = decode_cursor(cursor, ROOMS)
    if scope == "joined":
        mine = Membership.filter(user_id=user_id, banned=False).values("room_id")
        qs = Room.filter(id__in=Subquery(mine))
    else:
        qs = Room.filter(is_private=False)
    if q:
        qs = qs.filter(name__icontains=q)  # Tortoise escapes % and _ (LIKE ... ESCAPE '\')
    if after is not None:
        created, last_id = after
        qs = qs.filter(Q(created_at__lt=created) | Q(created_at=created, id__lt=last_id))
    rooms = await qs.order_by("-created_at", "-id").limit(limit + 1)
    more = len(rooms) > limit
    rooms = rooms[:limit]
    nxt = ROOMS.position(rooms[-1].created_at.isoformat(), str(rooms[-1].id)) if more else None
    return page(await render_rooms(rooms, user_id), nxt)


async def get_room(*, room_id: str, user_id: str) -> dict[str, Any]:
    """A room for a member, or for anyone when it is public."""
    rid = parse_uuid(room_id, RoomNotFound)
    room = await Room.filter(id=rid).first()
    if room is None or (room.is_private and await role_in(rid, user_id) is None):
        raise RoomNotFound()
    return await render_room(room, user_id)


async def require_member(*, room_id: str, user_id: str) -> Room:
    """The room when the user is a member; RoomNotFound (missing or private) or NotMember otherwise."""
    rid = parse_uuid(room_id, RoomNotFound)
    room = await Room.filter(id=rid).first()
    if room is None:
        raise RoomNotFound()
    if await role_in(rid, user_id) is None:
        deny(room)
    return room


async def update_room(*, redis: Redis, keys: Keys, room_id: str, user_id: str, data: UpdateRoom) -> dict[str, Any]:
    """Change name/topic/privacy (owner or admin); members are told with room_updated."""
    rid = parse_uuid(room_id, RoomNotFound)
    changes = {f: getattr(data, f) for f in data.model_fields_set}
    async with in_transaction() as conn:
        room = await locked_room(conn, rid)
        require_role(room, await role_in(rid, user_id, conn), (Role.OWNER, Role.ADMIN), "change the room")
        changed = [f for f, v in changes.items() if getattr(room, f) != v]
        for f in changed:
            setattr(room, f, changes[f])
        if changed:
            await room.save(using_db=conn, update_fields=changed)
    if changed:
        await publish_room_updated(redis, keys, room)
    return await render_room(room, user_id)


async def delete_room(*, redis: Redis, keys: Keys, room_id: str, user_id: str) -> None:
    """Delete a room with its memberships and messages (owner only)."""
    rid = parse_uuid(room_id, RoomNotFound)
    async with in_transaction() as conn:
        room = await locked_room(conn, rid, for_delete=True)
        require_role(room, await role_in(rid, user_id, conn), (Role.OWNER,), "delete the room")
        # Under the row lock: exactly the members whose cached room lists name this room.
        members = [str(u) for u in await Membership.filter(room_id=rid, banned=False).using_db(conn)
                   .values_list("user_id", flat=True)]
        await room.delete(using_db=conn)
    await forget_room(redis, keys, rid, members)


async def join_room(*, redis: Redis, keys: Keys, room_id: str, user_id: str,
                    settings: Settings | None = None) -> dict[str, Any]:
    """Join a public room (again is harmless); private -> 404, banned -> 403. The membership."""
    rid = parse_uuid(room_id, RoomNotFound)
    await rate_check(redis, keys, settings, "joins", user_id)
    version = 0
    async with in_transaction() as conn:
        room = await locked_room(conn, rid)
        existing = await Membership.filter(room_id=rid, user_id=user_id).using_db(conn).first()
        joined = existing is None
        if existing is not None and existing.banned:
            if room.is_private:
                raise RoomNotFound()
            raise Banned()
        if joined:
            if room.is_private:
                raise RoomNotFound()  # members of a private room are added by its owner or an admin
            await Membership.create(room_id=rid, user_id=user_id, role=Role.MEMBER, using_db=conn)
            version = await version_locked(redis, keys, rid)
    m = await load_membership(rid, user_id)
    if m is None:  # left again between our commit and this read
        raise NotMemberOfRoom()
    if joined:
        await announce_join(redis, keys, m, version)
    return membership_out(m)


async def leave_room(*, redis: Redis, keys: Keys, room_id: str, user_id: str) -> None:
    """Leave a room. An owner hands over to the oldest admin, else the oldest member; the last one out deletes it."""
    rid = parse_uuid(room_id, RoomNotFound)
    successor: Membership | None = None
    deleted = False
    async with in_transaction() as conn:
        room = await locked_room(conn, rid)
        m = await Membership.filter(room_id=rid, user_id=user_id, banned=False).using_db(conn).first()
        if m is None:
            if room.is_private:
                raise RoomNotFound()
            raise NotMemberOfRoom()
        if m.role == Role.OWNER:
            others = Membership.filter(room_id=rid, banned=False).exclude(id=m.id).using_db(conn)
            successor = (await others.filter(role=Role.ADMIN).order_by("joined_at", "id").first()
                         or await others.order_by("joined_at", "id").first())
            if successor is None:
                await room.delete(using_db=conn)  # memberships (banned rows too) and messages cascade
                deleted = True
            else:
                successor.role = Role.OWNER
                await successor.save(using_db=conn, update_fields=["role"])
                room.owner_id = successor.user_id
                await room.save(using_db=conn, update_fields=["owner_id"])
        if not deleted:
            await m.delete(using_db=conn)
            version = await remove_locked(redis, keys, rid, user_id)
    if deleted:
        await forget_room(redis, keys, rid, (user_id,))  # the last member out
        return
    await announce_leave(redis, keys, rid, user_id, version)
    if successor is not None:
        await publish_room_updated(redis, keys, room, {str(successor.user_id): Role.OWNER.value})


# -- reads for other services ------------------------------------------------------

async def member_ids(room_id: str) -> list[str]:
    """User ids of the room's members (banned excluded); [] for a missing or malformed room id."""
    rid = canonical_uuid(room_id)
    if rid is None:
        return []
    return [str(u) for u in await Membership.filter(room_id=rid, banned=False).values_list("user_id", flat=True)]


async def room_ids_of_user(user_id: str) -> list[str]:
    """Ids of the rooms the user is a member of, oldest membership first."""
    rows = await Membership.filter(user_id=user_id, banned=False).order_by("joined_at", "id").values_list("room_id", flat=True)
    return [str(r) for r in rows]


async def memberships_of_user(user_id: str) -> list[tuple[str, int]]:
    """(room id, last_read_seq as PostgreSQL holds it) of the user's rooms, oldest membership
    first: the hello's rooms and the floor of their read markers (app/reads.hello_rooms)."""
    rows = await Membership.filter(user_id=user_id, banned=False).order_by("joined_at", "id").values_list(
        "room_id", "last_read_seq")
    return [(str(r), int(m or 0)) for r, m in rows]


async def connect_rooms(redis: Redis, keys: Keys, settings: Settings, *, user_id: str,
                        family_id: str) -> tuple[bool, list[str], dict[str, int] | None]:
    """A WebSocket connect's first read, one Redis round trip in the common case: (logged out?,
    the user's room ids oldest membership first, their PostgreSQL markers or None when the
    ids came from the Redis cache). A missing list is read from PostgreSQL and cached unless a
    membership change of the user committed meanwhile (app/store/user_rooms.py)."""
    names = (keys.revoked_family(family_id), keys.user_rooms(user_id), keys.user_rooms_gen(user_id))
    if isinstance(redis, RedisCluster):  # the keys live in different slots: grouped by node
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(name)
            revoked, raw, gen = await pipe.execute()
    else:  # all three are strings: one plain MGET costs redis-py far less than a pipeline
        revoked, raw, gen = await redis.mget(names)
    if revoked:
        return True, [], None
    cached = user_rooms.decode(raw)
    if cached is not None:
        return False, cached, None
    # The generation was read before PostgreSQL: a change committing after this read bumps it.
    memberships = await memberships_of_user(user_id)
    ids = [rid for rid, _ in memberships]
    try:
        await user_rooms.store(redis, keys, user_id, user_rooms.generation(gen), ids, settings.user_rooms_ttl_s)
    except RedisError:
        log.warning("room list of user %s not cached", user_id, exc_info=True)
    return False, ids, dict(memberships)
