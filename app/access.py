"""Who may act in a room right now: the Redis member set first, PostgreSQL when Redis cannot say.

The accept script, `sync` and `typing` ask the Redis set (one round trip). Only when
it is missing (rebuild) or says no (recheck) does PostgreSQL decide, and then under
the room row's share lock, so the answer is a snapshot at a known membership
version (app/store/member_sets.py) and cannot undo a change that landed meanwhile. A
"not a member" answer is reused for a few seconds, so hammering a foreign room
costs Redis lookups, not queries.
"""

from __future__ import annotations

from redis.asyncio import Redis
from tortoise.transactions import in_transaction

from app.store import member_sets
from app.errors import NotMember, RoomNotFound
from app.store.keys import Keys
from app.ids import parse_uuid
from models.room import Membership


async def member_snapshot(redis: Redis, keys: Keys, room_id: str) -> tuple[int, list[str]] | None:
    """(version, member ids) as of one moment, or None when the room does not exist.

    The room row is held FOR SHARE while reading: no membership change is in flight, so the
    ids are exactly the changes up to the version read at the same moment.
    """
    async with in_transaction() as conn:
        rows = await conn.execute_query_dict("SELECT 1 FROM rooms WHERE id = $1 FOR SHARE", [room_id])
        if not rows:
            return None
        version = await member_sets.snapshot_version(redis, keys, room_id)
        ids = await Membership.filter(room_id=room_id, banned=False).using_db(conn).values_list("user_id", flat=True)
    return version, [str(u) for u in ids]


async def rebuild_members(redis: Redis, keys: Keys, room_id: str) -> None:
    """Redis lost the room's member set: rebuild it from PostgreSQL (404 when the room is gone)."""
    if await redis.exists(keys.room_gone(room_id)):
        raise RoomNotFound()
    snap = await member_snapshot(redis, keys, room_id)
    if snap is None:
        await member_sets.remember_denied(redis, keys, room_id, "", "404", room_gone=True)
        raise RoomNotFound()
    version, ids = snap
    await member_sets.load(redis, keys, room_id, ids, version)


async def check_member(redis: Redis, keys: Keys, room_id: str, user_id: str) -> None:
    """The Redis set says not a member: PostgreSQL decides between 404 and 403, or heals the set.

    A "not a member" answer is reused for a few seconds (member_sets.DENIED_TTL_S), so a
    client hammering a room it is not in costs Redis lookups, not PostgreSQL queries.
    """
    answer = await member_sets.denied(redis, keys, room_id, user_id)
    if answer is None:
        async with in_transaction() as conn:
            rows = await conn.execute_query_dict("SELECT is_private FROM rooms WHERE id = $1 FOR SHARE", [room_id])
            if rows:
                version = await member_sets.snapshot_version(redis, keys, room_id)
                member = await Membership.filter(room_id=room_id, user_id=user_id, banned=False).using_db(conn).exists()
        if not rows:
            answer = "404"
            await member_sets.remember_denied(redis, keys, room_id, user_id, answer, room_gone=True)
        elif not member:
            answer = "404" if rows[0]["is_private"] else "403"
            await member_sets.remember_denied(redis, keys, room_id, user_id, answer)
        else:  # the join's set update has not landed yet, or the set went stale: heal it
            await member_sets.add_at(redis, keys, room_id, user_id, version)
            return
    raise RoomNotFound() if answer == "404" else NotMember()


async def authorize(redis: Redis, keys: Keys, room_id: str, user_id: str) -> str:
    """The canonical room id when the user is a member, by the Redis set (one round trip);
    PostgreSQL only when Redis does not know or says no (capped, see check_member)."""
    rid = parse_uuid(room_id, RoomNotFound)
    state = await member_sets.is_member(redis, keys, rid, user_id)
    if state is None:
        await rebuild_members(redis, keys, rid)
        state = await member_sets.is_member(redis, keys, rid, user_id)
    if not state:
        await check_member(redis, keys, rid, user_id)
    return rid
