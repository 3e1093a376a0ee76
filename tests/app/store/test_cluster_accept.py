"""The accept script on a real Redis Cluster through the cluster batcher (app/store/cache.py).

On TEST_REDIS_CLUSTER_URL (any one node) or the session's own cluster (tests/cluster.py);
skipped when neither is possible.
Rooms are spread over all three masters; the scripts are flushed from every primary first, so
the NOSCRIPT reload runs too.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator

import pytest
from redis.exceptions import ResponseError

from app import metrics
from app.realtime import events
from app.store import cache, member_sets, pending
from app.store.client import connect_redis
from app.store.keys import Keys

# A cluster is processes (the session's, started on first use, unless TEST_REDIS_CLUSTER_URL).
pytestmark = pytest.mark.e2e


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[tuple[Any, Keys, cache.Batcher]]:
    redis = await connect_redis(cluster_url, cluster=True).initialize()  # before concurrent calls
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", cluster=True)
    batcher = cache.make_batcher(redis)
    assert isinstance(batcher, cache.ClusterBatcher)
    try:
        yield redis, keys, batcher
    finally:
        await batcher.close()
        async for key in redis.scan_iter(match=f"{keys.prefix}*", count=1000):
            await redis.unlink(key)
        await redis.aclose()


async def accept(batcher: cache.Batcher, keys: Keys, room_id: str, sender: str = "u1",
                 rate_limit: int = 0) -> cache.AcceptResult:
    policy = cache.AcceptPolicy(rate_limit=rate_limit, rate_window_ms=60_000, idempotency_ttl_s=60,
                                backlog_threshold=1000, flush_queued_ttl_s=30)
    return await cache.accept(
        batcher, keys, policy, room_id=room_id, sender_id=sender, client_id=None,
        before_seq='{"id":"x","seq":', after_seq=',"body":"b","created_at":"2026-01-01T00:00:00Z"}', event=events.message_payload_parts(room_id, "c1"),
        rate_limited=True)


async def rooms_on_every_node(redis: Any, keys: Keys, n: int) -> list[str]:
    """`n` (>= 3) ready rooms, the first three on three different masters."""
    first: dict[str, str] = {}
    while len(first) < 3:  # room ids are random: draw until every master has one
        r = str(uuid.uuid4())
        first.setdefault(redis.get_node_from_key(keys.room_seq(r)).name, r)
    rooms = [*first.values(), *(str(uuid.uuid4()) for _ in range(n - 3))]
    for r in rooms:
        await member_sets.room_created(redis, keys, r, ["u1"])
        await cache.seed_seq(redis, keys, r, 0)
    return rooms


async def test_concurrent_sends_over_every_node_get_gap_free_seqs_and_mark_rooms_pending(cluster) -> None:
    redis, keys, batcher = cluster
    rooms = await rooms_on_every_node(redis, keys, 30)
    await redis.script_flush()  # on every primary (redis-py routes it so): each answers NOSCRIPT first
    results = await asyncio.gather(*(accept(batcher, keys, r) for r in rooms for _ in range(5)))
    assert {res.code for res in results} == {cache.OK}
    for r in rooms:
        assert [int(e[0].split("-")[0]) for e in await redis.xrange(keys.room_log(r))] == [1, 2, 3, 4, 5]
    assert await pending.pending_rooms(redis, keys) == set(rooms)
    # What /metrics shows (chat_unflushed_rooms, _messages, _oldest_seconds) from the slot sets.
    n_rooms, n_messages, oldest = await metrics.backlog(redis, keys, 1000)
    assert (n_rooms, n_messages) == (30, 150) and oldest >= 0
    assert (await metrics.backlog(redis, keys, 10))[:2] == (30, 50)  # bounded scrape: 10 rooms read


async def test_one_error_reply_fails_only_its_own_send(cluster) -> None:
    redis, keys, batcher = cluster
    rooms = await rooms_on_every_node(redis, keys, 12)
    broken = rooms[0]
    await redis.set(keys.room_log(broken), "not a stream")  # XADD answers WRONGTYPE
    results = await asyncio.gather(*(accept(batcher, keys, r) for r in rooms), return_exceptions=True)
    assert isinstance(results[0], ResponseError)
    assert all(isinstance(res, cache.AcceptResult) and res.code == cache.OK for res in results[1:])


async def test_message_rate_limit_counts_per_room_on_a_cluster(cluster) -> None:
    """The one documented difference (README, docs/api.md): RATE_MESSAGES per user and room."""
    redis, keys, batcher = cluster
    a, b = (await rooms_on_every_node(redis, keys, 6))[:2]
    assert [(await accept(batcher, keys, a, rate_limit=2)).code for _ in range(3)] == \
        [cache.OK, cache.OK, cache.RATE_LIMITED]
    assert (await accept(batcher, keys, b, rate_limit=2)).code == cache.OK


async def _move_slot(redis: Any, slot: int, src: Any, dst: Any) -> None:
    """Migrate one slot with its keys from node `src` to node `dst`, as `redis-cli --cluster
    reshard` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE on both)."""
    src_id = await redis.execute_command("CLUSTER MYID", target_nodes=src)
    dst_id = await redis.execute_command("CLUSTER MYID", target_nodes=dst)
    await redis.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id, target_nodes=dst)
    await redis.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id, target_nodes=src)
    while True:
        names = await redis.execute_command("CLUSTER GETKEYSINSLOT", slot, 100, target_nodes=src)
        if not names:
            break
        await redis.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *names, target_nodes=src)
    for node in (dst, src):
        await redis.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id, target_nodes=node)


async def test_a_send_after_its_slot_moved_follows_the_redirect(cluster, cluster_url: str) -> None:
    """The batcher's slot map is stale after a reshard: the node answers MOVED (the script did
    not run), the send runs once through the cluster client, and the seqs go on gap-free."""
    redis, keys, batcher = cluster
    rid = (await rooms_on_every_node(redis, keys, 6))[0]
    assert (await accept(batcher, keys, rid)).code == cache.OK
    slot = redis.keyslot(keys.room_seq(rid))
    src = redis.get_node_from_key(keys.room_seq(rid))
    dst = next(n for n in redis.get_primaries() if n.name != src.name)
    # Another client moves the slot: this one's map still says `src`.
    other = await connect_redis(cluster_url, cluster=True).initialize()
    try:
        await _move_slot(other, slot, other.get_node(src.host, src.port), other.get_node(dst.host, dst.port))
        try:
            assert [(await accept(batcher, keys, rid)).code for _ in range(3)] == [cache.OK] * 3
            assert [e[0] for e in await redis.xrange(keys.room_log(rid))] == ["1-0", "2-0", "3-0", "4-0"]
            assert redis.get_node_from_key(keys.room_seq(rid)).name == dst.name  # the map followed
            assert rid in await pending.pending_rooms(redis, keys)
        finally:
            await other.aclose()
            other = await connect_redis(cluster_url, cluster=True).initialize()
            await _move_slot(other, slot, other.get_node(dst.host, dst.port), other.get_node(src.host, src.port))
    finally:
        await other.aclose()
