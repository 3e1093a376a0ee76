"""Each user's room list in Redis, so the common WebSocket connect reads no PostgreSQL (spec F).

Two keys per user, tagged `{user:<id>}` (one Cluster slot; app/store/keys.py): `rooms`, the
room ids oldest membership first, and `rgen`, the user's membership generation.

Consistency. PostgreSQL holds the truth; the list is a copy that may only be missing or
right, never wrong for longer than its TTL:
- every membership change of a user (join, leave, kick, ban, add/unban, room create, room
  delete), after its commit, runs `bump`: INCR rgen and DEL rooms, one script in the user's slot;
- a loader (`read` found no list) reads rgen first, then PostgreSQL, and stores the list with
  `store` only if rgen is still what it read (compare-and-set), so a list read before a
  change cannot be cached after that change's bump;
- the list carries a TTL (USER_ROOMS_TTL_S): a bump lost to a Redis failure right after a
  commit leaves it stale at most that long.
The connection registry's rules still decide what a live socket follows (register before
reading, attach only rooms whose membership did not change during the read, j:/l: events).
The scripts are app/store/lua/user_rooms_{bump,store}.lua; they never touch room keys.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.store import scripts
from app.store.keys import Keys

BUMP = scripts.SCRIPTS["user_rooms_bump"]
STORE = scripts.SCRIPTS["user_rooms_store"]
# The generation counter must outlive any load in flight (milliseconds); it is dropped after
# a day without changes so idle users cost nothing.
GEN_TTL_MS = 24 * 3600 * 1000


def encode(room_ids: Iterable[str]) -> str:
    return " ".join(room_ids)


def decode(raw: str | bytes | None) -> list[str] | None:
    """The cached value -> room ids; None when nothing is cached."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    return raw.split()


async def read(redis: Redis, keys: Keys, user_id: str) -> tuple[list[str] | None, str]:
    """(room ids or None when not cached, the generation to pass to `store`)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.user_rooms(user_id))
        pipe.get(keys.user_rooms_gen(user_id))
        raw, gen = await pipe.execute()
    return decode(raw), generation(gen)


def generation(raw: str | bytes | None) -> str:
    """rgen as `store` compares it ("0" when missing)."""
    if raw is None:
        return "0"
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def store(redis: Redis, keys: Keys, user_id: str, gen: str, room_ids: Iterable[str], ttl_s: int) -> bool:
    """Cache the list read from PostgreSQL after reading generation `gen`; False when a
    membership change of the user committed meanwhile (nothing cached)."""
    return bool(await STORE(redis, [keys.user_rooms(user_id), keys.user_rooms_gen(user_id)],
                            [gen, encode(room_ids), int(ttl_s * 1000)]))


async def bump(redis: Redis, keys: Keys, user_ids: Iterable[str]) -> None:
    """After a membership change of these users committed: new generations, lists dropped.
    One script per user (each in its own slot), pipelined: one round trip."""
    ids = list(dict.fromkeys(user_ids))
    if not ids:
        return
    if len(ids) == 1:
        await BUMP(redis, [keys.user_rooms(ids[0]), keys.user_rooms_gen(ids[0])], [GEN_TTL_MS])
        return
    if isinstance(redis, RedisCluster):  # its pipeline refuses EVALSHA: one call per user, all in flight
        await asyncio.gather(*(BUMP(redis, [keys.user_rooms(u), keys.user_rooms_gen(u)], [GEN_TTL_MS]) for u in ids))
        return
    await BUMP.load(redis)  # a pipeline cannot retry one EVALSHA after NOSCRIPT
    async with redis.pipeline(transaction=False) as pipe:
        for uid in ids:
            BUMP.queue(pipe, [keys.user_rooms(uid), keys.user_rooms_gen(uid)], [GEN_TTL_MS])
        await pipe.execute()
