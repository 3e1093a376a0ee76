-- Give orphans (entries whose seq PostgreSQL holds for another message, after a Redis
-- rollback) new seqs, atomically (app/flush/reseq.py). KEYS[3 + k] is the cid key of the
-- k-th orphan that has a client_id.
-- Returns {old seq, new seq, ...} of the moved ones. An orphan whose old entry is gone (moved
-- by an earlier run whose reply was lost) is left alone, so a rerun moves nothing twice; one
-- whose entry no longer carries its id fails the script before any write.
local log_key = KEYS[1]
local seq_key = KEYS[2]
local pending_key = KEYS[3]
local first_cid_key = 3                     -- KEYS[first_cid_key + k]

local floor = tonumber(ARGV[1])             -- PostgreSQL's max seq / rooms.last_seq
local trim_minid = ARGV[2]                  -- batch top + 1
local room_id = ARGV[3]
local events_channel = ARGV[4]
local cid_ttl_s = ARGV[5]
local resync_payload = ARGV[6]              -- the resync event, as the event codec encoded it
local event_prefix = ARGV[7]                -- the event codec's payload around a moved message
local event_suffix = ARGV[8]
local n = tonumber(ARGV[9])                 -- orphan count
local first_orphan = 10                     -- then per orphan: old seq, message id, cid key index

local cur = tonumber(redis.call('GET', seq_key) or '0')
if floor > cur then cur = floor end
local top = stream_top_seq(log_key)
if top > cur then cur = top end
-- check every orphan before writing anything: an entry that is not the message the flush read
-- (rewritten meanwhile) aborts the move, `flushed` stays, and the next run judges it again
local todo = {}
for i = 0, n - 1 do
  local at = first_orphan + 3 * i
  local old, mid, k = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  local e = redis.call('XRANGE', log_key, old .. '-0', old .. '-0')
  if #e == 1 then
    local msg = e[1][2][2]
    if not string.find(msg, '"id":"' .. mid .. '"', 1, true) then
      return redis.error_reply('ERR reseq: the entry at seq ' .. old .. ' changed since it was read')
    end
    todo[#todo + 1] = {old, msg, k}
  end
end
local moved = {}
for _, o in ipairs(todo) do
  local old, msg, k = o[1], o[2], o[3]
  cur = cur + 1
  local sseq = string.format('%d', cur)
  local new
  local s, t = string.find(msg, ',"seq":' .. old .. ',', 1, true)
  if s then  -- the accept path's layout: only the number changes
    new = string.sub(msg, 1, s - 1) .. ',"seq":' .. sseq .. ',' .. string.sub(msg, t + 1)
  else
    local m = cjson.decode(msg)
    m['seq'] = cur
    new = cjson.encode(m)
  end
  redis.call('XADD', log_key, sseq .. '-0', 'm', new)
  if k > 0 then redis.call('SET', KEYS[first_cid_key + k], sseq, 'EX', cid_ttl_s) end
  redis.call('PUBLISH', events_channel, event_prefix .. new .. event_suffix)
  moved[#moved + 1] = tonumber(old)
  moved[#moved + 1] = cur
end
redis.call('SET', seq_key, string.format('%d', cur))
if redis.call('EXISTS', log_key) == 1 then
  redis.call('PERSIST', log_key)
  -- everything up to the batch is in PostgreSQL (or dead_letters): the orphans' old entries
  -- must stop shadowing the PostgreSQL rows of their seqs in history reads
  redis.call('XTRIM', log_key, 'MINID', trim_minid)
end
if #moved > 0 then
  redis.call('SADD', pending_key, room_id)
  redis.call('PUBLISH', events_channel, resync_payload)
end
return moved
