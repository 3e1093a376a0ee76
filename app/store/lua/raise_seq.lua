-- After a Redis restart: raise an existing counter to at least PostgreSQL's max (a missing
-- one is seeded on the next send), and drop the stream's entries up to `flushed` (all in
-- PostgreSQL): left below the raised counter they would be a hole in what history reads.
-- Returns 1 raised, 0 already there, -1 missing.
local seq_key = KEYS[1]
local log_key = KEYS[2]
local flushed_key = KEYS[3]

local floor = ARGV[1]

local cur = redis.call('GET', seq_key)
if not cur then return -1 end
if tonumber(cur) < tonumber(floor) then
  redis.call('SET', seq_key, floor)
  local flushed = tonumber(redis.call('GET', flushed_key) or '0')
  if flushed > 0 and redis.call('EXISTS', log_key) == 1 then
    redis.call('XTRIM', log_key, 'MINID', flushed + 1)
  end
  return 1
end
return 0
