"""The Redis Cluster key layout (app/store/keys.py): every script's keys in the room's slot.

The pure checks run everywhere; the ones that ask a real cluster (the slot Redis itself gives
a key, scripts that touch a room's pending set and rate key) need TEST_REDIS_CLUSTER_URL (any
one node) or the session's own cluster (tests/cluster.py), and skip when neither is possible.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.crc import key_slot

from app.store import pending
from app.store.client import connect_redis
from app.store.keys import SLOT_TAGS, Keys, _SlotTags


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_single_node_layout_is_unchanged() -> None:
    keys = Keys("chat")
    room = str(uuid.uuid4())
    assert keys.pending_set(room) == "chat:pending_rooms" == keys.pending_rooms()
    assert keys.pending_sets() == ["chat:pending_rooms"]
    assert keys.script_rate("msg", room, "u1") == keys.rate("msg", "u1") == "chat:rate:msg:u1"


def test_pending_set_and_script_rate_share_the_room_slot() -> None:
    keys = Keys("chat", cluster=True)
    for _ in range(2000):
        room = str(uuid.uuid4())
        slot = _slot(keys.room_seq(room))
        assert _slot(keys.pending_set(room)) == slot
        assert _slot(keys.script_rate("msg", room, "user")) == slot
        assert _slot(keys.script_rate("chg", room, "user")) == slot


def test_one_pending_set_per_slot_with_stable_names() -> None:
    sets = Keys("p", cluster=True).pending_sets()
    assert len(sets) == 16384 == len(set(sets))
    assert [_slot(k) for k in sets] == list(range(16384))
    # Another process (a fresh table, filled in another order) names every slot's set the same.
    fresh = _SlotTags()
    for slot in (16383, 0, 9000):
        assert fresh.tag(slot) == SLOT_TAGS.tag(slot)
    assert fresh.all() == SLOT_TAGS.all()
    # Pinned: a rename would strand rooms pending under the old name across an upgrade.
    assert SLOT_TAGS.tag(0) == "p77998" and SLOT_TAGS.tag(16383) == "p18363"


@pytest.fixture
async def cluster(cluster_url: str):
    redis = await connect_redis(cluster_url, cluster=True).initialize()  # before concurrent calls (client.py)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", cluster=True)
    try:
        yield redis, keys
    finally:
        async for key in redis.scan_iter(match=f"{keys.prefix}*", count=1000):
            await redis.unlink(key)
        await redis.aclose()


@pytest.mark.e2e  # a cluster is processes (the session's, unless TEST_REDIS_CLUSTER_URL)
async def test_cluster_agrees_on_the_slots(cluster) -> None:
    redis, keys = cluster
    for _ in range(50):
        room = str(uuid.uuid4())
        assert await redis.cluster_keyslot(keys.pending_set(room)) == await redis.cluster_keyslot(keys.room_log(room))


@pytest.mark.e2e
async def test_pending_rooms_read_every_slot_set(cluster) -> None:
    """Rooms spread over every primary are all found by the readers (SCARD per slot set)."""
    redis, keys = cluster
    rooms = {str(uuid.uuid4()) for _ in range(60)}
    await asyncio.gather(*(redis.sadd(keys.pending_set(r), r) for r in rooms))
    nodes = {redis.get_node_from_key(keys.pending_set(r)).name for r in rooms}
    assert len(nodes) == 3  # the rooms really are on all three masters
    assert await pending.pending_rooms(redis, keys) == rooms
    assert await pending.pending_count(redis, keys) == len(rooms)
    gone = sorted(rooms)[0]
    await pending.forget_pending(redis, keys, gone)
    assert await pending.pending_rooms(redis, keys) == rooms - {gone}
