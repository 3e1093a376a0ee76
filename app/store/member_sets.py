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
"""

from __future__ import annotations

from typing import Iterable

from redis.asyncio import Redis

from app.store.keys import Keys

SENTINEL = "*"
DENIED_TTL_S = 10  # how long a "PostgreSQL says not a member" answer is reused (abuse cap)

# Allocate the next version. A missing counter (new room, or Redis lost it) starts at
# Redis's clock in microseconds, so versions handed out after a loss are above any
# recorded before it. KEYS: 1 mver. Returns the version.
_NEXT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
return redis.call('INCR', KEYS[1])
"""

# The current version without allocating one (for a snapshot read under FOR SHARE).
# KEYS: 1 mver. Returns the version.
_SNAPSHOT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
return tonumber(redis.call('GET', KEYS[1]))
"""

# Apply one change (join +v, leave -v) unless a newer one for the user was applied.
# KEYS: 1 members, 2 mvers, 3 mver, 4 denied:<user>. ARGV: 1 user, 2 signed version.
# Returns 1 applied, 0 stale, -1 room unknown (deleted: a removal still SREMs, which is never wrong).
_APPLY = """
local v = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 0 then
  if v < 0 then redis.call('SREM', KEYS[1], ARGV[1]) end
  return -1
end
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev and math.abs(tonumber(prev)) >= math.abs(v) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if v > 0 then redis.call('SADD', KEYS[1], ARGV[1]) else redis.call('SREM', KEYS[1], ARGV[1]) end
end
if v > 0 then redis.call('DEL', KEYS[4]) end
return 1
"""

# Build a missing set from a PostgreSQL snapshot taken at version ARGV[1]: the snapshot's
# members, except users whose newer change already landed, plus users who joined after it.
# KEYS: 1 members, 2 mvers, 3 mver. ARGV: 1 snapshot version, 2.. member ids.
# Returns 1 built, 0 already there, -1 room unknown.
_LOAD = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local v0 = tonumber(ARGV[1])
redis.call('SADD', KEYS[1], '*')
for i = 2, #ARGV do
  local e = redis.call('HGET', KEYS[2], ARGV[i])
  if not e or math.abs(tonumber(e)) <= v0 then redis.call('SADD', KEYS[1], ARGV[i]) end
end
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > v0 then redis.call('SADD', KEYS[1], all[i]) end
end
return 1
"""

# PostgreSQL (snapshot at ARGV[2]) says the user is a member although the set says not:
# add them unless a newer change for them landed. KEYS: 1 members, 2 mvers, 3 mver.
# ARGV: 1 user, 2 snapshot version. Returns 1 added, 0 not.
_ADD_AT = """
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local e = redis.call('HGET', KEYS[2], ARGV[1])
if e and math.abs(tonumber(e)) > tonumber(ARGV[2]) then return 0 end
return redis.call('SADD', KEYS[1], ARGV[1])
"""

# Repair listed users of a loaded set against a PostgreSQL snapshot taken at version ARGV[1]:
# add (ARGV[2] = "+") or remove ("-") each, unless a change of theirs newer than the snapshot
# already landed. KEYS: 1 members, 2 mvers, 3 mver. ARGV: 1 version, 2 op, 3.. users.
# Returns how many changed (-1: no set, or the room is gone).
_FIX = """
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v0 = tonumber(ARGV[1])
local n = 0
for i = 3, #ARGV do
  local e = redis.call('HGET', KEYS[2], ARGV[i])
  if not e or math.abs(tonumber(e)) <= v0 then
    if ARGV[2] == '+' then n = n + redis.call('SADD', KEYS[1], ARGV[i])
    else n = n + redis.call('SREM', KEYS[1], ARGV[i]) end
  end
end
return n
"""
FIX_CHUNK = 500  # users per script call: a large repair never blocks Redis for long


def _keys3(keys: Keys, room_id: str) -> list[str]:
    return [keys.room_members(room_id), keys.room_mvers(room_id), keys.room_mver(room_id)]


async def next_version(redis: Redis, keys: Keys, room_id: str) -> int:
    """A new membership version; call it while holding the room row lock (commit order)."""
    return int(await redis.eval(_NEXT, 1, keys.room_mver(room_id)))


async def snapshot_version(redis: Redis, keys: Keys, room_id: str) -> int:
    """The latest version handed out; call it while holding the room row FOR SHARE."""
    return int(await redis.eval(_SNAPSHOT, 1, keys.room_mver(room_id)))


async def apply(redis: Redis, keys: Keys, room_id: str, user_id: str, version: int, member: bool) -> int:
    """Apply a change of version `version` (member or not); 1 applied, 0 stale, -1 room unknown."""
    signed = version if member else -version
    return int(await redis.eval(_APPLY, 4, *_keys3(keys, room_id), keys.room_denied(room_id, user_id),
                                user_id, str(signed)))


async def room_created(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str], version: int = 0) -> None:
    """A new room: its seq counter starts at 0 and its member set is the creation's snapshot."""
    ids = list(member_ids)
    if version == 0:  # no version allocated (tests, tools): start the counter now
        version = await snapshot_version(redis, keys, room_id)
    await redis.set(keys.room_seq(room_id), 0, nx=True)
    await redis.eval(_LOAD, 3, *_keys3(keys, room_id), str(version), *ids)


async def load(redis: Redis, keys: Keys, room_id: str, member_ids: Iterable[str], version: int | None = None) -> None:
    """Rebuild a lost set from PostgreSQL's member list, read at snapshot `version`."""
    if version is None:
        version = await snapshot_version(redis, keys, room_id)
    await redis.eval(_LOAD, 3, *_keys3(keys, room_id), str(version), *member_ids)


async def add_at(redis: Redis, keys: Keys, room_id: str, user_id: str, version: int) -> bool:
    """PostgreSQL (at snapshot `version`) says member: heal the set unless a newer change landed."""
    return bool(await redis.eval(_ADD_AT, 3, *_keys3(keys, room_id), user_id, str(version)))


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
            got = int(await redis.eval(_FIX, 3, *_keys3(keys, room_id), str(version), op, *users[i:i + FIX_CHUNK]))
            if got < 0:
                return -1, -1
            n += got
        counts.append(n)
    return counts[0], counts[1]


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
