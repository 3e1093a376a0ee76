-- Count one event on a fixed-window rate limit (app/store/ratelimit.py).
-- Returns 0 when allowed, else the ms until the window ends.
local counter_key = KEYS[1]

local limit = tonumber(ARGV[1])
local window_ms = ARGV[2]

return rate_hit(counter_key, limit, window_ms)
