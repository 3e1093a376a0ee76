-- Move a member's read marker forward (app/store/reads.py), in one atomic step: member check,
-- target = min(seq, the room's last seq), forward only; when it moved: the flush's to-do
-- (rdirty, pending), the mention key pruned up to the marker, and the `read` event to the
-- user's connections (the codec's pieces around the three numbers: no JSON field named here).
-- Returns {0, marker, unread, mentions, moved 0|1} | {2} members missing | {3} not a member
--   | {5} seq missing | {6} no marker in Redis and no PostgreSQL floor given (the caller
--   reads memberships.last_read_seq and calls again with it: a lost `reads` hash heals).
local members_key = KEYS[1]
local seq_key = KEYS[2]
local reads_key = KEYS[3]
local rdirty_key = KEYS[4]
local pending_key = KEYS[5]
local mnt_key = KEYS[6]

local user = ARGV[1]
local want = tonumber(ARGV[2])
local floor = ARGV[3]                       -- '' or the PostgreSQL marker
local room_id = ARGV[4]
local channel = ARGV[5]
local p_marker = ARGV[6]                    -- the event's pieces (events.read_payload_parts)
local p_unread = ARGV[7]
local p_mentions = ARGV[8]
local p_tail = ARGV[9]
local p_answer = ARGV[10] or ''             -- '' or p_marker routed to the asking connection only

if redis.call('EXISTS', members_key) == 0 then return {2} end
if redis.call('SISMEMBER', members_key, user) == 0 then return {3} end
local slast = redis.call('GET', seq_key)
if not slast then return {5} end
local last = tonumber(slast)

local cur = redis.call('HGET', reads_key, user)
if not cur then
  if floor == '' then return {6} end
  cur = tonumber(floor)
  -- The PostgreSQL value is what the flush last wrote: already durable, so not dirty.
  redis.call('HSET', reads_key, user, cur)
else
  cur = tonumber(cur)
  if floor ~= '' and tonumber(floor) > cur then
    cur = tonumber(floor)
    redis.call('HSET', reads_key, user, cur)
  end
end

local target = want
if target > last then target = last end
local moved = 0
if target > cur then
  cur = target
  moved = 1
  redis.call('HSET', reads_key, user, cur)
  redis.call('SADD', rdirty_key, user)
  redis.call('SADD', pending_key, room_id)
  redis.call('ZREMRANGEBYSCORE', mnt_key, '-inf', cur)
end
local unread = last - cur
if unread < 0 then unread = 0 end
local mentions = redis.call('ZCOUNT', mnt_key, '(' .. cur, '+inf')
if moved == 1 then
  redis.call('PUBLISH', channel, p_marker .. cur .. p_unread .. unread .. p_mentions .. mentions .. p_tail)
elseif p_answer ~= '' then
  -- Nothing moved: the asking WebSocket connection alone is answered, from here, so its
  -- answer is ordered among the read events (it never overtakes an older marker's event).
  redis.call('PUBLISH', channel, p_answer .. cur .. p_unread .. unread .. p_mentions .. mentions .. p_tail)
end
return {0, cur, unread, mentions, moved}
