-- After a flush batch committed in PostgreSQL (app/flush/__init__.py): advance `flushed`, trim
-- the stream below it (keeping the newest cache_tail entries for reads), drop the room from
-- the pending set once nothing is left (idle TTL on its keys), renew the lease.
-- Nothing left = every message flushed AND no change (`changed`) AND no read marker (`rdirty`)
-- waiting for PostgreSQL (app/flush/changes.py writes those after the message batches and
-- calls this script once more to judge the room).
-- Returns {flushed, drained, lease_held, changes_waiting, markers_waiting} (the last two 1/0:
-- whether `changed` / `rdirty` hold anything, so the caller skips reading an empty one).
local log_key = KEYS[1]
local flushed_key = KEYS[2]
local seq_key = KEYS[3]
local pending_key = KEYS[4]
local lease_key = KEYS[5]
local members_key = KEYS[6]
local changed_key = KEYS[7]
local rdirty_key = KEYS[8]
local version_key = KEYS[9]
local state_key = KEYS[10]

local batch_max = tonumber(ARGV[1])         -- highest seq the batch committed
local cache_tail = tonumber(ARGV[2])
local room_id = ARGV[3]
local token = ARGV[4]                       -- this run's lease token
local lease_ms = ARGV[5]
local idle_ttl_s = tonumber(ARGV[6])        -- 0 = keep a drained room's keys

local flushed = tonumber(redis.call('GET', flushed_key) or '0')
local changes_waiting = redis.call('ZCARD', changed_key) > 0 and 1 or 0
local markers_waiting = redis.call('SCARD', rdirty_key) > 0 and 1 or 0
local idle = changes_waiting == 0 and markers_waiting == 0
if redis.call('EXISTS', log_key) == 0 then
  -- the room's cache is gone (room deleted, or an idle room's stream expired): no message left
  -- to flush, but a change or a read marker may still be (they outlive the stream)
  if idle then
    redis.call('SREM', pending_key, room_id)
    -- a change to an idle room re-created (and PERSISTed) its counters: they expire again
    if idle_ttl_s > 0 then
      for _, k in ipairs({flushed_key, seq_key, members_key, version_key, state_key}) do
        if redis.call('TTL', k) == -1 then redis.call('EXPIRE', k, idle_ttl_s) end
      end
    end
    return {flushed, 1, 1, 0, 0}
  end
  return {flushed, 0, 1, changes_waiting, markers_waiting}
end
if batch_max > flushed then
  flushed = batch_max
  redis.call('SET', flushed_key, flushed)
end
local last = tonumber(redis.call('GET', seq_key) or '0')
-- trim only what PostgreSQL has committed, and never the newest cache_tail entries
local minid = math.min(flushed + 1, last - cache_tail + 1)
if minid > 1 then
  redis.call('XTRIM', log_key, 'MINID', minid)
end
-- History reads the stream from its first entry on and PostgreSQL only below it, so the stream
-- must not have holes. A counter raised over a Redis rollback leaves one between the old tail
-- and the new entries: drop that tail (everything up to `flushed` is in PostgreSQL).
local n = redis.call('XLEN', log_key)
if n > 0 then
  local lo = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1][1]
  local hi = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1)[1][1]
  local span = tonumber(string.match(hi, '^(%d+)')) - tonumber(string.match(lo, '^(%d+)')) + 1
  if span ~= n then redis.call('XTRIM', log_key, 'MINID', flushed + 1) end
end
-- The overlay of a changed message is needed while the stream holds its original entry or
-- while its change is not in PostgreSQL; entries below the stream's new first id whose change
-- is written (no longer in `changed`) can go.
if redis.call('HLEN', state_key) > 0 then
  local first = nil
  local head = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1]
  if head then first = tonumber(string.match(head[1], '^(%d+)')) end
  for _, f in ipairs(redis.call('HKEYS', state_key)) do
    local seq = tonumber(f)
    if (not first or (seq and seq < first)) and not redis.call('ZSCORE', changed_key, f) then
      redis.call('HDEL', state_key, f)
    end
  end
end
local drained = 0
if flushed >= last and idle then
  redis.call('SREM', pending_key, room_id)
  drained = 1
  -- everything is in PostgreSQL: an idle room's keys may go (the accept script PERSISTs them)
  if idle_ttl_s > 0 then
    redis.call('EXPIRE', log_key, idle_ttl_s)
    redis.call('EXPIRE', flushed_key, idle_ttl_s)
    redis.call('EXPIRE', seq_key, idle_ttl_s)
    redis.call('EXPIRE', members_key, idle_ttl_s)
    redis.call('EXPIRE', version_key, idle_ttl_s)
    redis.call('EXPIRE', state_key, idle_ttl_s)
  end
end
-- renew the lease; re-take it if it lapsed during a slow batch, unless someone else has it
local held = 0
local holder = redis.call('GET', lease_key)
if holder == token or not holder then
  redis.call('SET', lease_key, token, 'PX', lease_ms)
  held = 1
end
return {flushed, drained, held, changes_waiting, markers_waiting}
