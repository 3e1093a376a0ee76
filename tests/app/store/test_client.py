"""A burst of concurrent commands beyond the pool size waits for connections instead of failing."""

from __future__ import annotations

import asyncio

from app.store.client import connect_redis


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


async def test_clients_built_from_settings_carry_connect_and_read_timeouts(settings) -> None:
    from app.store.client import connect_redis_for

    client = connect_redis_for(settings.replace(redis_connect_timeout_s=1.5, redis_socket_timeout_s=3.5))
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 1.5 and kwargs["socket_timeout"] == 3.5
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_silent_redis_fails_the_call_within_the_read_timeout() -> None:
    """A listener that accepts and never answers (what a stopped Redis looks like): TimeoutError, not a hang."""
    import socket
    import time

    from redis.exceptions import TimeoutError as RedisTimeout

    from app.errors import to_chat_error
    from app.store.client import connect_redis

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    client = connect_redis(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", connect_timeout_s=0.5,
                           socket_timeout_s=0.5)
    try:
        t0 = time.monotonic()
        try:
            await client.get("x")
        except RedisTimeout as exc:
            err = to_chat_error(exc)
        else:
            raise AssertionError("a silent Redis answered")
        assert time.monotonic() - t0 < 3.0
        assert err.status == 503 and err.code == "service_unavailable"
    finally:
        await client.aclose()
        silent.close()
