"""The Redis rate limiter, against the real Redis."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from app.store import ratelimit
from app.store.keys import Keys


def _key(keys: Keys) -> str:
    return keys.rate("test", uuid.uuid4().hex)


async def test_allows_up_to_the_limit_then_says_how_long_to_wait(redis: Redis, keys: Keys) -> None:
    key = _key(keys)
    assert [await ratelimit.hit(redis, key, 3, 60) for _ in range(3)] == [0, 0, 0]
    wait = await ratelimit.hit(redis, key, 3, 60)
    assert 1 <= wait <= 60
    # Still refused while the window lasts.
    assert await ratelimit.hit(redis, key, 3, 60) >= 1


async def test_subjects_are_counted_separately(redis: Redis, keys: Keys) -> None:
    a, b = _key(keys), _key(keys)
    assert await ratelimit.hit(redis, a, 1, 60) == 0
    assert await ratelimit.hit(redis, a, 1, 60) > 0
    assert await ratelimit.hit(redis, b, 1, 60) == 0


async def test_the_counter_always_carries_an_expiry(redis: Redis, keys: Keys) -> None:
    key = _key(keys)
    await ratelimit.hit(redis, key, 5, 30)
    ttl = await redis.ttl(key)
    assert 0 < ttl <= 30
    # A counter left without TTL (e.g. by an old version) is re-armed, never stuck forever.
    await redis.persist(key)
    await ratelimit.hit(redis, key, 5, 30)
    assert 0 < await redis.ttl(key) <= 30


async def test_a_new_window_allows_again(redis: Redis, keys: Keys) -> None:
    key = _key(keys)
    assert await ratelimit.hit(redis, key, 1, 60) == 0
    assert await ratelimit.hit(redis, key, 1, 60) > 0
    await redis.pexpire(key, 1)  # end the window without waiting a minute
    await asyncio.sleep(0.05)
    assert await ratelimit.hit(redis, key, 1, 60) == 0


async def test_concurrent_hits_never_exceed_the_limit(settings, keys: Keys) -> None:
    key = _key(keys)
    clients = [Redis.from_url(settings.redis_url, decode_responses=True) for _ in range(4)]
    try:
        results = await asyncio.gather(*(ratelimit.hit(clients[i % 4], key, 10, 60) for i in range(60)))
    finally:
        for c in clients:
            await c.aclose()
    assert sum(1 for r in results if r == 0) == 10
