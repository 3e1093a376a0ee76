"""Reading the pending state (rooms with something not yet in PostgreSQL) on either engine.

Scripts add and remove a room in `keys.pending_set(room_id)`; readers (the worker's flush tick,
`make flush`, `make status`, /metrics) go over `keys.pending_sets()`: the one global set on a
single node (one SMEMBERS, as before), the 16384 per-slot sets on a cluster, read with one
pipelined SCARD each (grouped by node by the cluster pipeline) and SMEMBERS of the non-empty
ones only. The tick runs once a minute, so a few thousand SCARDs per node per minute is cheap.
"""

from __future__ import annotations

from typing import Any

from app.store.keys import Keys

CHUNK = 4096  # commands per pipeline (bounded replies in memory)


async def _pipelined(redis: Any, command: str, keys: list[str]) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(keys), CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[i:i + CHUNK]:
                getattr(pipe, command)(key)
            out.extend(await pipe.execute())
    return out


async def pending_counts(redis: Any, keys: Keys) -> dict[str, int]:
    """Non-empty pending sets -> their size."""
    sets = keys.pending_sets()
    if len(sets) == 1:
        n = int(await redis.scard(sets[0]))
        return {sets[0]: n} if n else {}
    return {k: int(n) for k, n in zip(sets, await _pipelined(redis, "scard", sets)) if n}


async def pending_count(redis: Any, keys: Keys) -> int:
    """How many rooms are pending."""
    return sum((await pending_counts(redis, keys)).values())


async def pending_rooms(redis: Any, keys: Keys) -> set[str]:
    """Every pending room id."""
    sets = keys.pending_sets()
    if len(sets) == 1:
        return set(await redis.smembers(sets[0]))
    nonempty = list(await pending_counts(redis, keys))
    rooms: set[str] = set()
    for members in await _pipelined(redis, "smembers", nonempty):
        rooms.update(members)
    return rooms


async def forget_pending(redis: Any, keys: Keys, room_id: str) -> None:
    """Drop a room from its pending set (a deleted room, an id that is not a room)."""
    await redis.srem(keys.pending_set(room_id), room_id)
