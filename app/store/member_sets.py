"""The Redis copy of each room's member set, read by the message accept script.

The accept path must not touch PostgreSQL, yet only members may send. So every
membership change updates this set, and a set that Redis lost is rebuilt from
PostgreSQL on demand (`load`). The sentinel member "*" tells a loaded-but-empty
set from a missing one.

Ordering. Membership changes of a room commit one at a time (they lock the room
row), but their Redis updates run afterwards, from any process, and may arrive
in any order: a join's late SADD could land after the ban that followed it. So
each change takes a version (`next_version`, an INCR on the room's `mver`
counter) while it holds the row lock; versions therefore follow commit order.
The update is one script that applies SADD/SREM only when its version is newer
than the last one applied for that user in that room (`mvers`: user -> signed
version, + member, - not). All keys share the room's hash tag (one Cluster slot).

A rebuild, a recheck or the reconcile reads PostgreSQL while holding the room
row FOR SHARE (no membership change can be in flight then) and takes the version
snapshot at that moment (`snapshot_version`): its view is exactly the changes up
to that version, so it never overrides a user whose newer change already landed.
A deleted room loses its `mver` counter; every later script is then a no-op, so
a late update cannot resurrect the member set of a room that no longer exists.
The scripts are app/store/lua/member_*.lua.
"""

from __future__ import annotations

from typing import Iterable

from redis.asyncio import Redis

from app.store import scripts
from app.store.keys import Keys

SENTINEL = "*"
DENIED_TTL_S = 10  # how long a "PostgreSQL says not a member" answer is reused (abuse cap)

FIX_CHUNK = 500  # users per script call: a large repair never blocks Redis for long


def _keys3(keys: Keys, room_id: str) -> list[str]:
    return [keys.room_members(room_id), keys.room_mvers(room_id), keys.room_mver(room_id)]


async def next_version(redis: Redis, keys: Keys, room_id: str) -> int:
    """A new membership version; call it while holding the room row lock (commit order)."""
    return int(await scripts.MEMBER_NEXT_VERSION(redis, [keys.room_mver(room_id)], []))


async def snapshot_version(redis: Redis, keys: Keys, room_id: str) -> int:
    """The latest version handed out; call it while holding the room row FOR SHARE."""
    return int(await scripts.MEMBER_SNAPSHOT_VERSION(redis, [keys.room_mver(room_id)], []))


async def apply(redis: Redis, keys: Keys, room_id: str, user_id: str, version: int, member: bool) -> int:
    """Apply a change of version `version` (member or not); 1 applied, 0 stale, -1 room unknown."""
    signed = version if member else -version
    return int(await scripts.MEMBER_APPLY(redis, [*_keys3(keys, room_id), keys.room_denied(room_id, user_id)],
                                          [user_id, str(signed)]))


async def room_created(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str], version: int = 0) -> None:
    """A new room: its seq and change counters start at 0 and its member set is the creation's
    snapshot. (A change counter Redis lacks is re-seeded from PostgreSQL by the first hello or
    change that needs it: one query per room on the first connect after the creation, saved here.)"""
    ids = list(member_ids)
    if version == 0:  # no version allocated (tests, tools): start the counter now
        version = await snapshot_version(redis, keys, room_id)
    await redis.set(keys.room_seq(room_id), 0, nx=True)
    await redis.set(keys.room_version(room_id), 0, nx=True)
    await scripts.MEMBER_LOAD(redis, _keys3(keys, room_id), [str(version), *ids])


async def load(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str], version: int | None = None) -> None:
    """Rebuild a lost set from PostgreSQL's member list, read at snapshot `version`."""
    if version is None:
        version = await snapshot_version(redis, keys, room_id)
    await scripts.MEMBER_LOAD(redis, _keys3(keys, room_id), [str(version), *member_ids])


async def add_at(redis: Redis, keys: Keys, room_id: str, user_id: str, version: int) -> bool:
    """PostgreSQL (at snapshot `version`) says member: heal the set unless a newer change landed."""
    return bool(await scripts.MEMBER_ADD_AT(redis, _keys3(keys, room_id), [user_id, str(version)]))


async def reconcile(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str],
                    version: int) -> tuple[int, int]:
    """Repair a loaded set against a snapshot; (added, removed), (-1, -1) when there is no set.

    The difference is computed here (one SMEMBERS, usually nothing to do), and only the users
    that differ go through the version-checked script, in chunks.
    """
    current = await redis.smembers(keys.room_members(room_id))
    if not current:
        return -1, -1
    want = set(member_ids)
    counts = []
    for op, users in (("+", sorted(want - current)), ("-", sorted(current - want - {SENTINEL}))):
        n = 0
        for i in range(0, len(users), FIX_CHUNK):
            got = int(await scripts.MEMBER_FIX(redis, _keys3(keys, room_id),
                                              [str(version), op, *users[i:i + FIX_CHUNK]]))
            if got < 0:
                return -1, -1
            n += got
        counts.append(n)
    return counts[0], counts[1]


async def is_member(redis: Redis, keys: Keys, room_id: str, user_id: str) -> bool | None:
    """True/False when the set is loaded, None when Redis does not know (ask PostgreSQL).

    One plain command: a loaded set always holds the sentinel (only member_load.lua creates
    the set, with it; the other scripts touch a set that exists, and none removes "*"), so
    "is the sentinel in it" is "is it loaded". The pipeline of EXISTS + SISMEMBER it replaces cost 67 us of client CPU
    per call in redis-py against 43 us for this (each `sync` of a reconnect storm asks once)."""
    loaded, member = await redis.smismember(keys.room_members(room_id), [SENTINEL, user_id])
    if not loaded:
        return None
    return bool(member)


async def denied(redis: Redis, keys: Keys, room_id: str, user_id: str) -> str | None:
    """A recent "not a member" answer ("404"/"403", or "404" for a room that is gone), or None."""
    mine, gone = await redis.mget(keys.room_denied(room_id, user_id), keys.room_gone(room_id))
    return "404" if gone else mine


async def remember_denied(redis: Redis, keys: Keys, room_id: str, user_id: str, answer: str,
                          room_gone: bool = False) -> None:
    """Reuse PostgreSQL's "not a member" answer for a few seconds (cleared by a join)."""
    key = keys.room_gone(room_id) if room_gone else keys.room_denied(room_id, user_id)
    await redis.set(key, answer, ex=DENIED_TTL_S)


async def room_deleted(redis: Redis, keys: Keys, room_id: str) -> None:
    """Forget the room's membership (the counter too: later updates become no-ops)."""
    await redis.delete(keys.room_members(room_id), keys.room_mvers(room_id), keys.room_mver(room_id))
