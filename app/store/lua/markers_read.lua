-- The next read markers to write to PostgreSQL (app/flush/changes.py flush_markers): up to
-- `count` distinct users of the room's `rdirty` set (SRANDMEMBER with a count: all of them
-- when fewer) and their markers in `reads`, in one round trip (two before).
-- Returns {} when none is waiting, else {users, markers} (a missing marker is nil).
local reads_key = KEYS[1]
local dirty_key = KEYS[2]

local count = tonumber(ARGV[1])

local users = redis.call('SRANDMEMBER', dirty_key, count)
if #users == 0 then return {} end
return {users, redis.call('HMGET', reads_key, unpack(users))}
