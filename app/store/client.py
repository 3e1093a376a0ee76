"""Redis clients (a waiting pool with timeouts) and the persistence check of API.md's Durability section.

The server's client is opened and closed with its Resources (app/resources.py). With
REDIS_CLUSTER=true the same calls return a `redis.asyncio.cluster.RedisCluster` started from
the one node REDIS_URL names (it discovers the rest): every client built from settings comes
from here."""

from __future__ import annotations

import logging
from typing import Any, Union

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from app.settings import Settings

log = logging.getLogger("chat.redis")


# How long a command waits for a free pooled connection before failing with 503.
POOL_WAIT_S = 10.0


# Either kind of client: the project's code calls what both offer (app/store/scripts.py covers
# the differences of script loading, `is_cluster` the rest).
AnyRedis = Union[Redis, RedisCluster]


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def connect_redis(url: str, max_connections: int = 256, *, connect_timeout_s: float = 2.0,
                  socket_timeout_s: float = 5.0, cluster: bool = False) -> Any:
    """A client whose pool WAITS for a free connection when all are in use, with timeouts.

    redis-py's default pool fails at once ("Too many connections", a 503 to the client)
    past 100 connections, which a burst of concurrent requests reaches easily. Without
    timeouts a Redis that stops answering (SIGSTOP, a network partition, a stuck host)
    hangs every request forever: with them a call fails within seconds (503).
    Not for subscriptions or blocking commands, which wait longer than any reply timeout
    (app/realtime/fanout.py builds its own client with socket_timeout=None).

    `cluster`: a RedisCluster with the same timeouts and `max_connections` per node. Its node
    pools do not wait when full (redis-py has no blocking pool for clusters): past that many
    concurrent commands on one node a call fails at once (503), so size REDIS_POOL_MAX for it.
    A cold cluster client must be initialised (`await client.initialize()`, or any one command)
    before concurrent use: with uvloop, redis-py 8.1 fails concurrent first calls with
    AttributeError ('NoneType' object has no attribute 'writelines'). The server and the worker
    run one command first (check_persistence, ping); scripts.register initialises too.
    """
    if cluster:
        return RedisCluster.from_url(url, decode_responses=True, health_check_interval=30,
                                     max_connections=max_connections, socket_connect_timeout=connect_timeout_s,
                                     socket_timeout=socket_timeout_s)
    pool = BlockingConnectionPool.from_url(url, decode_responses=True, health_check_interval=30,
                                           max_connections=max_connections, timeout=POOL_WAIT_S,
                                           socket_connect_timeout=connect_timeout_s,
                                           socket_timeout=socket_timeout_s)
    return Redis.from_pool(pool)


def connect_redis_for(settings: Settings, max_connections: int | None = None) -> Any:
    """connect_redis with the settings' pool size, timeouts and engine (REDIS_*)."""
    return connect_redis(settings.redis_url, max_connections or settings.redis_pool_max,
                         connect_timeout_s=settings.redis_connect_timeout_s,
                         socket_timeout_s=settings.redis_socket_timeout_s, cluster=settings.redis_cluster)


async def primaries_info(redis: Any, section: str) -> dict[str, dict[str, Any]]:
    """INFO <section> of every primary ("host:port" -> fields); one entry on a single node."""
    if is_cluster(redis):
        return dict(await redis.info(section, target_nodes=RedisCluster.PRIMARIES))
    return {"": await redis.info(section)}


async def primaries_config(redis: Any, name: str) -> dict[str, str]:
    """CONFIG GET <name> of every primary ("host:port" -> value); one entry on a single node."""
    if is_cluster(redis):
        # One call per node: a single target returns the node's own reply, not a merged dict.
        return {node.name: (await redis.config_get(name, target_nodes=node)).get(name, "")
                for node in redis.get_primaries()}
    return {"": (await redis.config_get(name)).get(name, "")}


# What each AOF fsync policy loses (docs/reliability.md, "Redis process crash"; README, Durability).
# `always` loses nothing on a process or host crash; the others are worth one warning line.
FSYNC_RISK = {
    "everysec": ("Redis runs with appendfsync everysec: a crash of the Redis process alone can lose up "
                 "to ~2 s of acknowledged messages (Redis postpones the AOF write while a background "
                 "fsync runs, and replies meanwhile), a host crash as much. Use appendfsync always to lose none."),
    "no": ("Redis runs with appendfsync no: a host crash can lose up to ~30 s of acknowledged messages "
           "(the kernel's writeback), a Redis process crash none. Use appendfsync always to lose none."),
}


async def check_persistence(redis: Any, settings: Settings) -> None:
    """Warn when Redis keeps nothing on disk; refuse in production unless explicitly allowed.
    Warn (never refuse) when its fsync policy can lose acknowledged messages on a crash.
    On a cluster every primary must keep an AOF."""
    try:
        infos = await primaries_info(redis, "persistence")
    except Exception:  # noqa: BLE001 - an unreachable Redis is reported by /readyz, not here
        log.warning("could not read Redis persistence settings")
        return
    aof = all(str(info.get("aof_enabled", 0)) == "1" for info in infos.values())
    if aof:
        await _warn_fsync_policy(redis)
        return
    msg = ("Redis runs without AOF persistence: acknowledged messages not yet flushed to "
           "PostgreSQL are lost if Redis restarts. Use appendonly yes, appendfsync always.")
    if settings.production and not settings.allow_redis_without_persistence:
        raise RuntimeError(msg + " Refusing to start (set ALLOW_REDIS_WITHOUT_PERSISTENCE=true to override).")
    log.warning(msg)


async def _warn_fsync_policy(redis: Any) -> None:
    try:
        policies = await primaries_config(redis, "appendfsync")
    except Exception:  # noqa: BLE001 - managed Redis often disables CONFIG: the AOF check above stands
        log.info("could not read Redis's appendfsync (CONFIG GET refused): its crash losses are unchecked")
        return
    # Each policy in use among the primaries once (they lose different things: see FSYNC_RISK).
    for policy in sorted({p.lower() for p in policies.values()} & FSYNC_RISK.keys()):
        log.warning(FSYNC_RISK[policy])
