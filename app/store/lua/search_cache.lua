-- Search (app/search.py): what PostgreSQL cannot answer yet about one room, in one atomic read:
-- the stream's entries after `flushed` (not committed in PostgreSQL) and the `state` overlay
-- (the latest JSON of every message with a change PostgreSQL may not hold yet).
-- The caller queues it for every room on one pipeline (one round trip), then asks PostgreSQL:
-- an entry flushed meanwhile is found twice (deduplicated by seq), never missed.
-- Returns {{msg, msg, ...}, {seq, json, seq, json, ...}}.
local log_key = KEYS[1]
local flushed_key = KEYS[2]
local state_key = KEYS[3]

local flushed = tonumber(redis.call('GET', flushed_key) or '0')
local rows = redis.call('XRANGE', log_key, string.format('%d-0', flushed + 1), '+')
local entries = {}
for i = 1, #rows do
  entries[#entries + 1] = rows[i][2][2]
end
return {entries, redis.call('HGETALL', state_key)}
