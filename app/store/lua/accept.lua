-- Accept one message (app/store/cache.py): member check, idempotency, rate limit, seq,
-- append, publish, in one atomic step. Nothing is written before the last check passes,
-- so a rejected send consumes no seq.
-- Returns {0, msg, backlog, flush_queued_now} | {1, stored msg or "", seq} | {2} members missing
--       | {3} not a member | {4, retry ms} | {5} seq counter missing.
local members_key = KEYS[1]
local rate_key = KEYS[2]
local cid_key = KEYS[3]
local seq_key = KEYS[4]
local log_key = KEYS[5]
local flushed_key = KEYS[6]
local pending_key = KEYS[7]
local flush_queued_key = KEYS[8]
local reads_key = KEYS[9]
local rdirty_key = KEYS[10]
-- KEYS[11..]: the mnt:<name> key of each user the message @mentions (names parsed in Python)

local sender = ARGV[1]                      -- "" = system message: no member check
local rate_limit = tonumber(ARGV[2])        -- 0 = off
local rate_window_ms = ARGV[3]
local idempotency_ttl_s = ARGV[4]
local msg_before_seq = ARGV[5]              -- the message JSON is before .. seq .. after
local msg_after_seq = ARGV[6]
local event_prefix = ARGV[7]                -- the event codec's payload around the message
local event_suffix = ARGV[8]
local room_id = ARGV[9]
local events_channel = ARGV[10]
local backlog_threshold = tonumber(ARGV[11])
local flush_queued_ttl_s = ARGV[12]
local has_cid = ARGV[13] == '1'
local mention_ttl_s = ARGV[14]              -- a mention counts for as long as its message lives

if sender ~= '' then
  if redis.call('EXISTS', members_key) == 0 then return {2} end
  if redis.call('SISMEMBER', members_key, sender) == 0 then return {3} end
end
-- The cid key holds only the seq: a retry gets the entry from the stream while it is there
-- ("" once trimmed: the caller reads that seq from PostgreSQL). A key written by an older
-- version holds the whole message JSON, returned as it is.
if has_cid then
  local prev = redis.call('GET', cid_key)
  if prev then
    if string.byte(prev, 1) == 123 then return {1, prev, -1} end
    local e = redis.call('XRANGE', log_key, prev .. '-0', prev .. '-0')
    if #e == 1 then return {1, e[1][2][2], prev} end
    return {1, '', prev}
  end
end
if redis.call('EXISTS', seq_key) == 0 then return {5} end
if rate_limit > 0 then
  local wait = rate_hit(rate_key, rate_limit, rate_window_ms)
  if wait > 0 then return {4, wait} end
end
-- A drained room's keys carry an idle TTL (set by the flush): a send removes it, tried on
-- the log first (one call when there is none; the log is the key that must never expire
-- with unflushed entries).
if redis.call('PERSIST', log_key) == 1 then
  redis.call('PERSIST', seq_key)
  redis.call('PERSIST', flushed_key)
  redis.call('PERSIST', members_key)
end
local seq = redis.call('INCR', seq_key)
local sseq = string.format('%d', seq)
local msg = msg_before_seq .. sseq .. msg_after_seq
redis.call('XADD', log_key, sseq .. '-0', 'm', msg)
if has_cid then redis.call('SET', cid_key, sseq, 'EX', idempotency_ttl_s) end
redis.call('SADD', pending_key, room_id)
-- Your own message is read by you: the sender's marker moves to it (system messages have no
-- sender). The flush writes the marker to PostgreSQL (rdirty); the room is pending anyway.
if sender ~= '' then
  redis.call('HSET', reads_key, sender, sseq)
  redis.call('SADD', rdirty_key, sender)
end
for i = 11, #KEYS do
  redis.call('ZADD', KEYS[i], seq, sseq)
  redis.call('EXPIRE', KEYS[i], mention_ttl_s)
end
redis.call('PUBLISH', events_channel, event_prefix .. msg .. event_suffix)
local backlog = seq - tonumber(redis.call('GET', flushed_key) or '0')
local queued = 0
if backlog >= backlog_threshold then
  if redis.call('SET', flush_queued_key, '1', 'NX', 'EX', flush_queued_ttl_s) then queued = 1 end
end
return {0, msg, backlog, queued}
