"""Redis clients (a waiting pool with timeouts) and the persistence check of API.md's Durability section.

The server's client is opened and closed with its Resources (app/resources.py)."""

from __future__ import annotations

import logging

from redis.asyncio import BlockingConnectionPool, Redis

from app.settings import Settings

log = logging.getLogger("chat.redis")


# How long a command waits for a free pooled connection before failing with 503.
POOL_WAIT_S = 10.0


def connect_redis(url: str, max_connections: int = 256, *, connect_timeout_s: float = 2.0,
                  socket_timeout_s: float = 5.0) -> Redis:
    """A client whose pool WAITS for a free connection when all are in use, with timeouts.

    redis-py's default pool fails at once ("Too many connections", a 503 to the client)
    past 100 connections, which a burst of concurrent requests reaches easily. Without
    timeouts a Redis that stops answering (SIGSTOP, a network partition, a stuck host)
    hangs every request forever: with them a call fails within seconds (503).
    Not for subscriptions or blocking commands, which wait longer than any reply timeout
    (app/realtime/fanout.py builds its own client with socket_timeout=None).
    """
    pool = BlockingConnectionPool.from_url(url, decode_responses=True, health_check_interval=30,
                                           max_connections=max_connections, timeout=POOL_WAIT_S,
                                           socket_connect_timeout=connect_timeout_s,
                                           socket_timeout=socket_timeout_s)
    return Redis.from_pool(pool)


def connect_redis_for(settings: Settings, max_connections: int | None = None) -> Redis:
    """connect_redis with the settings' pool size and timeouts (REDIS_*)."""
    return connect_redis(settings.redis_url, max_connections or settings.redis_pool_max,
                         connect_timeout_s=settings.redis_connect_timeout_s,
                         socket_timeout_s=settings.redis_socket_timeout_s)


async def check_persistence(redis: Redis, settings: Settings) -> None:
    """Warn when Redis keeps nothing on disk; refuse in production unless explicitly allowed."""
    try:
        info = await redis.info("persistence")
    except Exception:  # noqa: BLE001 - an unreachable Redis is reported by /readyz, not here
        log.warning("could not read Redis persistence settings")
        return
    aof = str(info.get("aof_enabled", 0)) == "1"
    if aof:
        return
    msg = ("Redis runs without AOF persistence: acknowledged messages not yet flushed to "
           "PostgreSQL are lost if Redis restarts. Use appendonly yes, appendfsync everysec.")
    if settings.production and not settings.allow_redis_without_persistence:
        raise RuntimeError(msg + " Refusing to start (set ALLOW_REDIS_WITHOUT_PERSISTENCE=true to override).")
    log.warning(msg)
