-- End a flush run: release its lease if this run still holds it, and re-arm the room's
-- backlog trigger (messages that arrived after the run's last read may need a new run), in
-- one round trip. Returns 1 released, 0 not ours.
local lease_key = KEYS[1]
local flush_queued_key = KEYS[2]

local token = ARGV[1]

redis.call('DEL', flush_queued_key)
if redis.call('GET', lease_key) == token then
  return redis.call('DEL', lease_key)
end
return 0
