-- Re-create a lost counter: the highest of PostgreSQL's max seq, the stream's last generated
-- id (kept by Redis even after trimming) and the flushed mark, so that a seq PostgreSQL or
-- the stream already holds is never handed out again. Returns the counter's value.
local seq_key = KEYS[1]
local log_key = KEYS[2]
local flushed_key = KEYS[3]

local pg_max = tonumber(ARGV[1])

local cur = redis.call('GET', seq_key)
if cur then return tonumber(cur) end
local v = pg_max
local top = stream_top_seq(log_key)
if top > v then v = top end
local f = tonumber(redis.call('GET', flushed_key) or '0')
if f > v then v = f end
redis.call('SET', seq_key, string.format('%d', v))
return v
