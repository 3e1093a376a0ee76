"""The process's resources, built once: settings, keys, Redis, the accept policy and pipeline.

The server builds one in before_server_start (`setup_resources` puts it on app.ctx as
`app.ctx.resources`, with `app.ctx.redis`/`keys`/`settings` beside it for the code that
takes those) and the worker one at boot (tasks/broker.py `resources()`), the way arq hands
its `ctx` and Synapse its `hs` to everything. Whatever a process keeps between calls lives
here, never in a module: the accept batcher (one pipelined connection per Redis client),
the producer broker that enqueues jobs, and what the flush learned about its database role.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis
from sanic import Sanic

from app.db import raw_pool
from app.flush.write import FkSkip
from app.jobs import Producer
from app.settings import Settings
from app.store import scripts
from app.store.cache import AcceptPolicy, Batcher, make_batcher
from app.store.client import check_persistence, connect_redis_for
from app.store.keys import SLOT_TAGS, Keys


@dataclass(frozen=True)
class Resources:
    """What services use; one per process (or per test), closed with `close`."""

    settings: Settings
    keys: Keys
    redis: Redis
    policy: AcceptPolicy
    batcher: Batcher  # the accept scripts' pipelined connection (app/store/cache.py)
    jobs: Producer
    fk_skip: FkSkip = field(default_factory=FkSkip)

    @classmethod
    def build(cls, settings: Settings, redis: Redis, keys: Keys | None = None) -> "Resources":
        """Wrap an open Redis client (a RedisCluster with REDIS_CLUSTER); opens nothing (the
        batcher connects on first send)."""
        keys = keys or Keys.from_settings(settings)
        if keys.cluster:
            SLOT_TAGS.all()  # the per-slot pending set names (~0.2 s once), before the first send
        return cls(settings=settings, keys=keys, redis=redis,
                   policy=AcceptPolicy.from_settings(settings), batcher=make_batcher(redis),
                   jobs=Producer(settings))

    def with_settings(self, settings: Settings) -> "Resources":
        """The same connections under other settings (a test's tighter limits, a tool's mode):
        the policy is rebuilt, the batcher and producer are shared."""
        return replace(self, settings=settings, policy=AcceptPolicy.from_settings(settings))

    def pool(self) -> Any:
        """The asyncpg pool behind Tortoise (looked up per use: Tortoise may replace it)."""
        return raw_pool()

    async def register_scripts(self) -> None:
        """Load every Lua script into Redis (start-up: the first sends find them there)."""
        await scripts.register(self.redis)

    async def close(self) -> None:
        """Release what `build` made (the Redis client itself is closed by its opener)."""
        await self.batcher.close()
        await self.jobs.aclose()


def setup_resources(app: Sanic) -> None:
    """Build the server's Resources before it starts (app.ctx.resources; app.ctx.redis and
    app.ctx.keys are its own, for code that takes those), close them after it stops."""

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        s: Settings = app.ctx.settings
        res = Resources.build(s, connect_redis_for(s))
        app.ctx.resources, app.ctx.keys, app.ctx.redis = res, res.keys, res.redis
        await check_persistence(res.redis, s)
        await res.register_scripts()

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        res: Resources = app.ctx.resources
        await res.close()
        await res.redis.aclose()
