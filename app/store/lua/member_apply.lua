-- Apply one membership change (join +v, leave -v) unless a newer one for the user was applied.
-- Returns 1 applied, 0 stale, -1 room unknown (deleted: a removal still SREMs, never wrong).
local members_key = KEYS[1]
local mvers_key = KEYS[2]
local mver_key = KEYS[3]
local denied_key = KEYS[4]

local user_id = ARGV[1]
local signed_version = ARGV[2]
local v = tonumber(signed_version)

if redis.call('EXISTS', mver_key) == 0 then
  if v < 0 then redis.call('SREM', members_key, user_id) end
  return -1
end
local prev = redis.call('HGET', mvers_key, user_id)
if prev and math.abs(tonumber(prev)) >= math.abs(v) then return 0 end
redis.call('HSET', mvers_key, user_id, signed_version)
if redis.call('EXISTS', members_key) == 1 then
  if v > 0 then redis.call('SADD', members_key, user_id) else redis.call('SREM', members_key, user_id) end
end
if v > 0 then redis.call('DEL', denied_key) end
return 1
