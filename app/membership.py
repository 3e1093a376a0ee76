"""Managing other people's memberships: the member list, add (and unban), roles, kick and ban.

The room-level rules (visibility, locking, after-commit events) are app/rooms.py's;
this module applies them to the calls an owner or admin makes about someone else.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from app.store import member_sets
from app.access import member_snapshot
from app.errors import Forbidden, NotMemberOfRoom, RoomNotFound, UserNotFound, ValidationFailed
from app.store.keys import Keys
from app.ids import parse_uuid
from app.pagination import MEMBERS, decode_cursor, page
from app.rooms import (announce_join, announce_leave, load_membership, locked_room,
                       publish_room_updated, rate_check, remove_locked, require_member,
                       require_role, role_in, version_locked)
from app.serialize import utcnow
from app.schemas import membership_out
from app.settings import Settings
from models.room import Membership, Role, Room
from models.user import User

log = logging.getLogger("chat.membership")

MANAGERS = (Role.OWNER, Role.ADMIN)


async def list_members(*, room_id: str, user_id: str, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
    """A page of the room's members (banned excluded), in the order they joined; members only."""
    room = await require_member(room_id=room_id, user_id=user_id)
    after = decode_cursor(cursor, MEMBERS)
    qs = Membership.filter(room_id=room.id, banned=False)
    if after is not None:
        joined, mid = after
        qs = qs.filter(Q(joined_at__gt=joined) | Q(joined_at=joined, id__gt=mid))
    rows = await qs.select_related("user").order_by("joined_at", "id").limit(limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = MEMBERS.position(rows[-1].joined_at.isoformat(), rows[-1].id) if more else None
    return page([membership_out(m) for m in rows], nxt)


async def _target_user(raw: str) -> str:
    uid = parse_uuid(raw, UserNotFound)
    if not await User.filter(id=uid).exists():
        raise UserNotFound()
    return uid


async def add_member(*, redis: Redis, keys: Keys, room_id: str, actor_id: str, user_id: str,
                     settings: Settings | None = None) -> tuple[dict[str, Any], bool]:
    """Make a user a member (owner/admin), unbanning them if banned. -> (membership, created)."""
    rid = parse_uuid(room_id, RoomNotFound)
    await rate_check(redis, keys, settings, "joins", actor_id)  # member adds count as the actor's joins
    version = 0
    async with in_transaction() as conn:
        room = await locked_room(conn, rid)
        require_role(room, await role_in(rid, actor_id, conn), MANAGERS, "add members")
        uid = await _target_user(user_id)
        m = await Membership.filter(room_id=rid, user_id=uid).using_db(conn).first()
        created = m is None or m.banned
        if m is None:
            await Membership.create(room_id=rid, user_id=uid, role=Role.MEMBER, using_db=conn)
        elif m.banned:
            # Re-adding lifts the ban; the user comes back as a fresh member.
            m.banned, m.role, m.joined_at = False, Role.MEMBER, utcnow()
            await m.save(using_db=conn, update_fields=["banned", "role", "joined_at"])
        if created:
            version = await version_locked(redis, keys, rid)
    m = await load_membership(rid, uid)
    if m is None or m.banned:  # changed again between our commit and this read
        raise NotMemberOfRoom()
    if created:
        await announce_join(redis, keys, m, version)
    return membership_out(m), created


async def change_role(*, redis: Redis, keys: Keys, room_id: str, actor_id: str, user_id: str,
                      role: str) -> dict[str, Any]:
    """Make a member an admin or a plain member again (owner only)."""
    rid = parse_uuid(room_id, RoomNotFound)
    new_role = Role(role)
    async with in_transaction() as conn:
        room = await locked_room(conn, rid)
        require_role(room, await role_in(rid, actor_id, conn), (Role.OWNER,), "change roles")
        uid = await _target_user(user_id)
        m = await Membership.filter(room_id=rid, user_id=uid, banned=False).using_db(conn).first()
        if m is None:
            raise NotMemberOfRoom("This user is not a member of this room.")
        if m.role == Role.OWNER:
            raise Forbidden("The owner's role cannot be changed; ownership passes on when the owner leaves.")
        changed = m.role != new_role
        if changed:
            m.role = new_role
            await m.save(using_db=conn, update_fields=["role"])
    if changed:
        await publish_room_updated(redis, keys, room, {uid: new_role.value})
    m = await load_membership(rid, uid)
    if m is None or m.banned:
        raise NotMemberOfRoom("This user is not a member of this room.")
    return membership_out(m)


async def remove_member(*, redis: Redis, keys: Keys, room_id: str, actor_id: str, user_id: str,
                        ban: bool = False) -> None:
    """Kick (or ban) a user: owner or admin, never over the owner or a peer admin.

    A ban keeps the row with banned=True so that joining again answers 403 banned;
    banning a user who is not (yet) a member records the ban all the same.
    """
    rid = parse_uuid(room_id, RoomNotFound)
    async with in_transaction() as conn:
        room = await locked_room(conn, rid)
        actor_role = await role_in(rid, actor_id, conn)
        require_role(room, actor_role, MANAGERS, "remove members")
        uid = await _target_user(user_id)
        if uid == actor_id:
            raise Forbidden("Use POST /rooms/{id}/leave to leave a room.")
        m = await Membership.filter(room_id=rid, user_id=uid).using_db(conn).first()
        was_member = m is not None and not m.banned
        if m is not None and m.role == Role.OWNER:
            raise Forbidden("The owner cannot be removed.")
        if m is not None and m.role == Role.ADMIN and actor_role != Role.OWNER:
            raise Forbidden("Only the owner can remove an admin.")
        if not was_member and not ban:
            raise NotMemberOfRoom("This user is not a member of this room.")
        if ban:
            if m is None:
                await Membership.create(room_id=rid, user_id=uid, role=Role.MEMBER, banned=True, using_db=conn)
            elif not m.banned:
                m.banned, m.role = True, Role.MEMBER
                await m.save(using_db=conn, update_fields=["banned", "role"])
        else:
            await m.delete(using_db=conn)  # type: ignore[union-attr]  # was_member implies a row
        if was_member:
            version = await remove_locked(redis, keys, rid, uid)
    if was_member:
        await announce_leave(redis, keys, rid, uid, version)


def parse_ban(raw: str | None) -> bool:
    """`?ban=true|false` (also 1/0, yes/no); absent means false."""
    if raw is None or raw == "":
        return False
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValidationFailed({"ban": "must be true or false"})



# -- the periodic reconcile (tasks/membership.py) -------------------------------------

RECONCILE_BATCH = 500  # rooms per PostgreSQL page: one bounded read, then one small snapshot per room


async def reconcile_all(*, redis: Redis, keys: Keys, batch: int = RECONCILE_BATCH) -> dict[str, int]:
    """Repair every loaded Redis member set that differs from PostgreSQL.

    Rooms are paged from PostgreSQL by id (never KEYS/SCAN). Each room is compared against a
    snapshot read under its row's share lock (access.member_snapshot), and users whose change
    landed after that snapshot are left alone, so a live join or ban is never overridden. A
    missing set is left missing: the next send rebuilds it.
    """
    stats = {"rooms": 0, "checked": 0, "added": 0, "removed": 0}
    last: str | None = None
    while True:
        qs = Room.all()
        if last is not None:
            qs = qs.filter(id__gt=last)
        ids = [str(r) for r in await qs.order_by("id").limit(batch).values_list("id", flat=True)]
        if not ids:
            return stats
        last = ids[-1]
        stats["rooms"] += len(ids)
        async with redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.exists(keys.room_members(rid))
            loaded = await pipe.execute()
        for rid, present in zip(ids, loaded):
            if not present:
                continue
            snap = await member_snapshot(redis, keys, rid)
            if snap is None:  # deleted meanwhile
                continue
            version, members = snap
            added, removed = await member_sets.reconcile(redis, keys, rid, members, version)
            if added >= 0:
                stats["checked"] += 1
                stats["added"] += added
                stats["removed"] += removed
                if added or removed:
                    log.warning("member set of room %s repaired: %d added, %d removed", rid, added, removed)
