-- Start a flush run of a room (app/flush/__init__.py): take its lease and, only when taken,
-- re-arm its backlog trigger and read where the flush stands, in one round trip (three before).
-- Returns {1, flushed seq} when the lease is ours, {0} when another run holds it.
local lease_key = KEYS[1]
local flush_queued_key = KEYS[2]
local flushed_key = KEYS[3]

local token = ARGV[1]
local lease_ms = ARGV[2]

if not redis.call('SET', lease_key, token, 'NX', 'PX', lease_ms) then return {0} end
-- What arrives from now on may ask for another run.
redis.call('DEL', flush_queued_key)
return {1, redis.call('GET', flushed_key) or '0'}
