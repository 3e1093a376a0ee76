-- PostgreSQL (snapshot at a version) says the user is a member although the set says not:
-- add them unless a newer change for them landed. Returns 1 added, 0 not.
local members_key = KEYS[1]
local mvers_key = KEYS[2]
local mver_key = KEYS[3]

local user_id = ARGV[1]
local snapshot_version = tonumber(ARGV[2])

if redis.call('EXISTS', mver_key) == 0 or redis.call('EXISTS', members_key) == 0 then return 0 end
local e = redis.call('HGET', mvers_key, user_id)
if e and math.abs(tonumber(e)) > snapshot_version then return 0 end
return redis.call('SADD', members_key, user_id)
