-- A membership change of the user committed (app/store/user_rooms.py): a new generation, and
-- the cached room list goes (the next connect reloads it from PostgreSQL). A loader that read
-- the old generation then fails its compare-and-set (user_rooms_store.lua), so a list read
-- before the change never lands after it. Both keys are the user's (one slot).
-- Returns the new generation.
local rooms_key = KEYS[1]
local gen_key = KEYS[2]

local gen_ttl_ms = ARGV[1]

local gen = redis.call('INCR', gen_key)
-- The counter only has to outlive any load in flight; an expired one restarts at 0, which no
-- loader still holds (it would have read the counter within the last TTL).
redis.call('PEXPIRE', gen_key, gen_ttl_ms)
redis.call('DEL', rooms_key)
return gen
