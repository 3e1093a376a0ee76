-- The current membership version without allocating one (for a snapshot read under FOR
-- SHARE); a missing counter starts at Redis's clock, as in member_next_version.lua.
local mver_key = KEYS[1]

if redis.call('EXISTS', mver_key) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', mver_key, string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
return tonumber(redis.call('GET', mver_key))
