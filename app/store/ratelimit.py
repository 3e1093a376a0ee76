"""Fixed-window rate limits on Redis, shared by every server process.

One Lua script per hit, so counting and arming the window's expiry are one
atomic step: two processes hitting the same key can never both see "first hit"
or leave a counter without a TTL (which would block its subject forever).
"""

from __future__ import annotations

from redis.asyncio import Redis

# The fixed-window rule as a Lua function, so that other scripts embed the same rule:
# the message accept script (app/store/cache.py) counts a send inside its own atomic step.
# rate_hit(key, limit, window_ms) -> 0 when the hit is allowed, else the ms until the window ends.
RATE_HIT_LUA = """
local function rate_hit(key, limit, window_ms)
  local n = redis.call('INCR', key)
  local ttl = redis.call('PTTL', key)
  if n == 1 or ttl < 0 then
    redis.call('PEXPIRE', key, window_ms)
    ttl = tonumber(window_ms)
  end
  if n > limit then return ttl end
  return 0
end
"""

# KEYS[1] = counter; ARGV[1] = limit, ARGV[2] = window in ms.
_HIT = RATE_HIT_LUA + "return rate_hit(KEYS[1], tonumber(ARGV[1]), ARGV[2])\n"


async def hit(redis: Redis, key: str, limit: int, window_s: int) -> int:
    """Count one event on `key`; 0 when allowed, else the seconds to wait (for Retry-After)."""
    # register_script caches the SHA on the client and falls back to EVAL once per server.
    script = redis.register_script(_HIT)
    wait_ms = int(await script(keys=[key], args=[int(limit), int(window_s) * 1000]))
    if wait_ms <= 0:
        return 0
    return max(1, -(-wait_ms // 1000))  # ceil: never tell a client to retry too early
