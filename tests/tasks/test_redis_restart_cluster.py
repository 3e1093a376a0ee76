"""A restart on a Redis Cluster (app/flush/reseq.check_redis_restart): the "run id" is every
primary's, so any master restarted or promoted raises every room's counter to PostgreSQL's max,
in rooms on every master. Runs on the cluster engine only (tests/conftest.py's redis_engines)."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from app import flush
from tests.fill import make_room, push

pytestmark = pytest.mark.redis_engines("cluster")


async def test_a_changed_primary_run_id_raises_counters_in_rooms_on_every_master(isolated, redis, pool) -> None:
    keys, settings = isolated.keys, isolated.settings
    assert isinstance(redis, RedisCluster) and keys.cluster
    await redis.initialize()  # the slot map, for get_node_from_key
    rooms: dict[str, str] = {}  # master -> room
    while len(rooms) < 3:
        sender, room = await make_room()
        node = redis.get_node_from_key(keys.room_seq(room)).name
        if node not in rooms:
            rooms[node] = room
            await push(redis, keys, room, sender, 4)
    await flush.flush_all_pending(redis=redis, keys=keys, settings=settings, pool=pool)
    # Each master came back from before the messages: counters at 1, log and flushed mark gone.
    for room in rooms.values():
        await redis.delete(keys.room_log(room), keys.room_flushed(room))
        await redis.set(keys.room_seq(room), 1)
    await redis.set(keys.redis_run_id(), "the-cluster-before-the-crash")

    raised = await flush.check_redis_restart(redis=redis, keys=keys, pool=pool)
    assert raised is not None and raised >= 3
    for room in rooms.values():
        assert int(await redis.get(keys.room_seq(room))) == 4
        assert await redis.get(keys.room_flushed(room)) is None  # the check never advances it
    ids = await redis.info("server", target_nodes=RedisCluster.PRIMARIES)
    assert await redis.get(keys.redis_run_id()) == ",".join(sorted(i["run_id"] for i in ids.values()))
    assert await flush.check_redis_restart(redis=redis, keys=keys, pool=pool) is None  # nothing changed since
