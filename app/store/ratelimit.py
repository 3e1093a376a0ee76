"""Fixed-window rate limits on Redis, shared by every server process.

One Lua script per hit, so counting and arming the window's expiry are one
atomic step: two processes hitting the same key can never both see "first hit"
or leave a counter without a TTL (which would block its subject forever). The rule is
`rate_hit` in app/store/lua/lib.lua, which the accept script runs inside its own atomic step.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.store import scripts

async def hit(redis: Redis, key: str, limit: int, window_s: int) -> int:
    """Count one event on `key`; 0 when allowed, else the seconds to wait (for Retry-After)."""
    wait_ms = int(await scripts.RATE_HIT(redis, [key], [int(limit), int(window_s) * 1000]))
    if wait_ms <= 0:
        return 0
    return max(1, -(-wait_ms // 1000))  # ceil: never tell a client to retry too early
