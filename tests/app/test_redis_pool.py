"""A burst of concurrent commands beyond the pool size waits for connections instead of failing."""

from __future__ import annotations

import asyncio

from app.redis import connect_redis


async def test_more_concurrent_commands_than_connections_all_succeed(settings) -> None:
    client = connect_redis(settings.redis_url, max_connections=4)
    try:
        # BLPOP holds its connection for 0.2 s: 40 of them over 4 connections must queue, not fail
        # (redis-py's default pool raises "Too many connections", which clients saw as 503s).
        key = f"{settings.redis_prefix}:pool-test:empty"
        results = await asyncio.gather(*(client.blpop([key], timeout=0.2) for _ in range(40)))
        assert results == [None] * 40
    finally:
        await client.aclose()
