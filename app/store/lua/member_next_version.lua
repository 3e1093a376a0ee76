-- Allocate the next membership version of a room (app/store/member_sets.py). A missing
-- counter (new room, or Redis lost it) starts at Redis's clock in microseconds, so versions
-- handed out after a loss are above any recorded before it. Returns the version.
local mver_key = KEYS[1]

if redis.call('EXISTS', mver_key) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', mver_key, string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
return redis.call('INCR', mver_key)
