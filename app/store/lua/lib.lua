-- Shared functions: app/store/scripts.py prepends each (with the comment right above it)
-- to the scripts of this folder that call it (Redis scripts cannot require one another).

-- The seq of a stream's last generated id (kept by Redis even after trimming), 0 for no
-- stream: scripts that must stay above every seq a stream ever held start from it.
local function stream_top_seq(key)
  if redis.call('EXISTS', key) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return tonumber(string.match(info[i + 1], '^(%d+)')) or 0
    end
  end
  return 0
end

-- One hit of a fixed-window rate limit: counting and arming the window's expiry are one
-- step, so no counter is ever left without a TTL (which would block its subject forever).
-- Returns 0 when the hit is allowed, else the ms until the window ends.
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
