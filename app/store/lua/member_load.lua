-- Build a missing member set from a PostgreSQL snapshot taken at a version: the snapshot's
-- members, except users whose newer change already landed, plus users who joined after it.
-- The sentinel "*" marks the set loaded. Returns 1 built, 0 already there, -1 room unknown.
local members_key = KEYS[1]
local mvers_key = KEYS[2]
local mver_key = KEYS[3]

local snapshot_version = tonumber(ARGV[1])
local first_member = 2                      -- ARGV[2..] are the member ids

if redis.call('EXISTS', mver_key) == 0 then return -1 end
if redis.call('EXISTS', members_key) == 1 then return 0 end
redis.call('SADD', members_key, '*')
for i = first_member, #ARGV do
  local e = redis.call('HGET', mvers_key, ARGV[i])
  if not e or math.abs(tonumber(e)) <= snapshot_version then redis.call('SADD', members_key, ARGV[i]) end
end
local all = redis.call('HGETALL', mvers_key)
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > snapshot_version then redis.call('SADD', members_key, all[i]) end
end
return 1
