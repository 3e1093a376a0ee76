-- Cache the user's room list read from PostgreSQL, only if no membership change of the user
-- committed since the loader read the generation (compare-and-set; a missing counter is "0").
-- Returns 1 stored, 0 stale (a change landed meanwhile: the list is not cached).
local rooms_key = KEYS[1]
local gen_key = KEYS[2]

local expected_gen = ARGV[1]
local room_list = ARGV[2]
local ttl_ms = ARGV[3]

if (redis.call('GET', gen_key) or '0') ~= expected_gen then return 0 end
redis.call('SET', rooms_key, room_list, 'PX', ttl_ms)
return 1
