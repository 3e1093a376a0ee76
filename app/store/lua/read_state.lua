-- One room's read state for one user (app/store/reads.py; pipelined over many rooms):
-- marker = max(Redis, PostgreSQL). A PostgreSQL value above Redis's (the `reads` hash was
-- lost, or never held this user) is written back, so the next mark_read starts from it.
-- Returns {last seq or -1 (counter missing), marker, unread, mentions}.
local seq_key = KEYS[1]
local reads_key = KEYS[2]
local mnt_key = KEYS[3]

local user = ARGV[1]
local pg_marker = tonumber(ARGV[2]) or 0

local slast = redis.call('GET', seq_key)
local cur = tonumber(redis.call('HGET', reads_key, user) or '-1')
if pg_marker > cur then
  cur = pg_marker
  redis.call('HSET', reads_key, user, cur)
end
if not slast then return {-1, cur, 0, 0} end
local last = tonumber(slast)
local unread = last - cur
if unread < 0 then unread = 0 end
return {last, cur, unread, redis.call('ZCOUNT', mnt_key, '(' .. cur, '+inf')}
