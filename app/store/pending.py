"""Reading the pending state (rooms with something not yet in PostgreSQL) on either engine.

Scripts add and remove a room in `keys.pending_set(room_id)`; readers (the worker's flush tick,
`make flush`, `make status`, /metrics) go over `keys.pending_sets()`: the one global set on a
single node (one SMEMBERS, as before), the 16384 per-slot sets on a cluster, read with one
pipelined SCARD each and SMEMBERS of the non-empty ones only. The SCARDs go out as one
hand-packed write per primary (the slots it serves, from the client's slot map): redis-py's
cluster pipeline spent ~0.4 s of CPU on 16384 of them, this ~30 ms (paired runs, 5 reads each,
on a loopback 3-master cluster), which matters since every /metrics scrape reads the sizes too.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis.exceptions import ResponseError

from app.store.keys import Keys

CHUNK = 4096  # commands per pipeline (bounded replies in memory)
TIMEOUT_S = 5.0  # a chunk's replies, when the client has no socket timeout


async def _scards_by_node(cluster: Any, sets: list[str]) -> list[int]:
    """SCARD of each set, `sets[i]` being the set of slot i (Keys.pending_sets' order)."""
    if cluster._initialize:
        await cluster.initialize()
    slots = cluster.nodes_manager.slots_cache
    groups: dict[str, tuple[Any, list[int]]] = {}
    for slot in range(len(sets)):
        node = slots[slot][0]
        groups.setdefault(node.name, (node, []))[1].append(slot)
    out: list[int] = [0] * len(sets)

    async def one(node: Any, todo: list[int]) -> None:
        conn = node.acquire_connection()
        try:
            for i in range(0, len(todo), CHUNK):
                part = todo[i:i + CHUNK]
                packed = b"".join(b"*2\r\n$5\r\nSCARD\r\n$%d\r\n%s\r\n" % (len(k), k)
                                  for k in (sets[slot].encode() for slot in part))
                try:
                    await conn.send_packed_command(packed)
                    replies = []
                    # One timeout for the chunk: a timeout per reply (redis-py's read_response
                    # default) cost more than the reads themselves.
                    async with asyncio.timeout(conn.socket_timeout or TIMEOUT_S):
                        for _ in part:
                            try:
                                replies.append(await conn.read_response(timeout=math.inf))
                            except ResponseError as err:  # MOVED/ASK: the slot is elsewhere now
                                replies.append(err)
                except BaseException:
                    await conn.disconnect()
                    raise
                for slot, reply in zip(part, replies):
                    # A moved slot: asked again through the cluster client, which follows it.
                    out[slot] = int(await cluster.scard(sets[slot]) if isinstance(reply, Exception) else reply)
        finally:
            node.release(conn)

    await asyncio.gather(*(one(node, todo) for node, todo in groups.values()))
    return out


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
    return {k: n for k, n in zip(sets, await _scards_by_node(redis, sets)) if n}


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
