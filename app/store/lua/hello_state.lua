-- One room's part of the WebSocket hello for one user (app/reads.py, pipelined over the
-- user's rooms: one round trip): the two catch-up cursors and the read state. Room keys only.
-- `pg_marker` is the PostgreSQL marker when the caller has it, '' when not: then a user the
-- `reads` hash does not know gets marker -1 and the caller asks PostgreSQL for that room only.
-- Otherwise as read_state.lua: marker = max(Redis, PostgreSQL), a higher PostgreSQL value is
-- written back. Returns {last seq or -1 (counter missing), last version or -1 (missing),
-- marker or -1 (unknown), unread, mentions}.
local seq_key = KEYS[1]
local version_key = KEYS[2]
local reads_key = KEYS[3]
local mnt_key = KEYS[4]

local user = ARGV[1]
local pg_marker = tonumber(ARGV[2])

local slast = redis.call('GET', seq_key)
local version = tonumber(redis.call('GET', version_key) or '-1')
local cur = tonumber(redis.call('HGET', reads_key, user) or '-1')
if pg_marker and pg_marker > cur then
  cur = pg_marker
  redis.call('HSET', reads_key, user, cur)
end
if cur < 0 or not slast then return {tonumber(slast or '-1'), version, cur, 0, 0} end
local last = tonumber(slast)
local unread = last - cur
if unread < 0 then unread = 0 end
return {last, version, cur, unread, redis.call('ZCOUNT', mnt_key, '(' .. cur, '+inf')}
