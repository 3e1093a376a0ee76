"""The Redis copy of each room's member set, read by the message accept script.

The accept path must not touch PostgreSQL, yet only members may send. So every
membership change updates this set right after its transaction commits, and a
set that Redis lost is rebuilt from PostgreSQL on demand (`load`). The sentinel
member "*" tells a loaded-but-empty set from a missing one.
"""

from __future__ import annotations

from typing import Iterable

from redis.asyncio import Redis

from app.keys import Keys

SENTINEL = "*"


async def room_created(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str]) -> None:
    """A new room: its seq counter starts at 0 and its member set is known."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.room_seq(room_id), 0, nx=True)
        pipe.sadd(keys.room_members(room_id), SENTINEL, *member_ids)
        await pipe.execute()


# Only add to a loaded set: adding to a missing one would make it look complete.
# One script, so the check and the add cannot be split by a concurrent delete.
_ADD_IF_LOADED = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('SADD', KEYS[1], ARGV[1]) end return -1"


async def add(redis: Redis, keys: Keys, room_id: str, user_id: str) -> None:
    await redis.eval(_ADD_IF_LOADED, 1, keys.room_members(room_id), user_id)


async def remove(redis: Redis, keys: Keys, room_id: str, user_id: str) -> None:
    await redis.srem(keys.room_members(room_id), user_id)


async def load(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str]) -> None:
    """Rebuild a lost set from PostgreSQL's member list."""
    await redis.sadd(keys.room_members(room_id), SENTINEL, *member_ids)


async def is_member(redis: Redis, keys: Keys, room_id: str, user_id: str) -> bool | None:
    """True/False when the set is loaded, None when Redis does not know (ask PostgreSQL)."""
    key = keys.room_members(room_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(key)
        pipe.sismember(key, user_id)
        exists, member = await pipe.execute()
    if not exists:
        return None
    return bool(member)


async def room_deleted(redis: Redis, keys: Keys, room_id: str) -> None:
    """Forget the room's membership; its message cache is dropped by the room service."""
    await redis.delete(keys.room_members(room_id))
