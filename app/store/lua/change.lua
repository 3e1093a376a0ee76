-- One change to an existing message (app/store/changes.py): an edit, a delete (tombstone) or a
-- reaction added/removed, in one atomic step. Checks first (nothing is written before the
-- last one passes, so a refused change takes no version), then the room's next `version`
-- (gap-free: INCR inside the script), the new state into the overlay, the flush's to-do,
-- and the `message_updated` event the codec prepared (prefix .. message JSON .. suffix).
-- Returns {0, json, version} done | {1, json} unchanged (no version, no event)
--   | {2} members missing | {3} not a member | {4, retry ms} rate limited | {5} seq missing
--   | {6} need base (the caller loads the row from PostgreSQL) | {7} no such message
--   | {8, reason} forbidden ('not_sender' | 'not_editable') | {9} not the sender (a
--   moderator may: the caller asks PostgreSQL, then calls with moderator '1')
--   | {10} deleted | {11} too many distinct emoji | {12} version counter missing.
local members_key = KEYS[1]
local seq_key = KEYS[2]
local log_key = KEYS[3]
local state_key = KEYS[4]
local changed_key = KEYS[5]
local version_key = KEYS[6]
local pending_key = KEYS[7]
local rate_key = KEYS[8]
local flushed_key = KEYS[9]
-- KEYS[10..]: the mnt:<name> keys of the edit's NEW mentions (the old ones are built from
-- the stored message with mnt_prefix: same room, same hash tag, same slot).

local op = ARGV[1]                          -- edit | delete | react_add | react_remove
local actor = ARGV[2]
local sseq = ARGV[3]
local moderator = ARGV[4] == '1'            -- the actor may delete others' messages
local new_body = ARGV[5]
local new_mentions = ARGV[6]                -- JSON array of lowercased names (edit)
local emoji = ARGV[7]
local now = ARGV[8]                         -- ISO time of an edit
local reactions_max = tonumber(ARGV[9])
local base = ARGV[10]                       -- '' or the message as PostgreSQL holds it
local event_prefix = ARGV[11]
local event_suffix = ARGV[12]
local room_id = ARGV[13]
local events_channel = ARGV[14]
local rate_limit = tonumber(ARGV[15])       -- 0 = off
local rate_window_ms = ARGV[16]
local mnt_prefix = ARGV[17]
local mention_ttl_s = ARGV[18]

if redis.call('EXISTS', members_key) == 0 then return {2} end
if redis.call('SISMEMBER', members_key, actor) == 0 then return {3} end
local last = redis.call('GET', seq_key)
if not last then return {5} end
local seq = tonumber(sseq)
if not seq or seq < 1 or seq > tonumber(last) then return {7} end
if redis.call('EXISTS', version_key) == 0 then return {12} end

-- The message's latest state: the overlay, else the stream entry, else the caller's copy of
-- the PostgreSQL row (the overlay outranks that copy: a change may have landed meanwhile).
local raw = redis.call('HGET', state_key, sseq)
if not raw then
  local e = redis.call('XRANGE', log_key, sseq .. '-0', sseq .. '-0')
  if #e == 1 then raw = e[1][2][2] elseif base ~= '' then raw = base end
end
if not raw then return {6} end
local msg = cjson.decode(raw)

-- cjson cannot tell an empty array from an empty object (both encode as {}): empty
-- `reactions` and `mentions` are dropped, readers default them to [] (messages.normalize).
local tidy = function(m)
  if type(m.reactions) ~= 'table' or #m.reactions == 0 then m.reactions = nil end
  if type(m.mentions) ~= 'table' or #m.mentions == 0 then m.mentions = nil end
  if m.reactions then
    for _, r in ipairs(m.reactions) do r.me = nil end  -- per viewer, never stored
  end
  return m
end
msg = tidy(msg)

local sender = msg.sender_id
if sender == cjson.null then sender = nil end
if msg.deleted == true then
  if op == 'delete' then return {1, cjson.encode(msg)} end
  return {10}
end

local reactions = msg.reactions or {}
local at, mine = nil, nil               -- the emoji's entry; the actor's place in its user_ids
if op == 'edit' then
  if sender ~= actor then return {8, 'not_sender'} end
  if msg.kind ~= 'text' then return {8, 'not_editable'} end
  if msg.body == new_body then return {1, cjson.encode(msg)} end
elseif op == 'delete' then
  if sender ~= actor and not moderator then return {9} end
else
  for i, r in ipairs(reactions) do
    if r.emoji == emoji then
      at = i
      for j, u in ipairs(r.user_ids) do
        if u == actor then mine = j end
      end
    end
  end
  if op == 'react_add' then
    if mine then return {1, cjson.encode(msg)} end
    if not at and #reactions >= reactions_max then return {11} end
  elseif not mine then
    return {1, cjson.encode(msg)}
  end
end

if rate_limit > 0 then
  local wait = rate_hit(rate_key, rate_limit, rate_window_ms)
  if wait > 0 then return {4, wait} end
end

local version = redis.call('INCR', version_key)
msg.version = version
if op == 'edit' or op == 'delete' then
  -- the old mentions stop counting; an edit's new ones are added below
  if msg.mentions then
    for _, name in ipairs(msg.mentions) do redis.call('ZREM', mnt_prefix .. name, sseq) end
  end
end
if op == 'edit' then
  msg.body = new_body
  msg.edited_at = now
  msg.mentions = cjson.decode(new_mentions)
  for i = 10, #KEYS do
    redis.call('ZADD', KEYS[i], seq, sseq)
    redis.call('EXPIRE', KEYS[i], mention_ttl_s)
  end
elseif op == 'delete' then
  msg.deleted = true
  msg.body = ''
  msg.file = cjson.null
  msg.reply_to = cjson.null
  msg.mentions = nil
  msg.reactions = nil
elseif op == 'react_add' then
  if at then
    local r = reactions[at]
    r.user_ids[#r.user_ids + 1] = actor
    r.count = #r.user_ids
  else
    reactions[#reactions + 1] = {emoji = emoji, count = 1, user_ids = {actor}}
  end
  msg.reactions = reactions
else
  local r = reactions[at]
  table.remove(r.user_ids, mine)
  r.count = #r.user_ids
  if r.count == 0 then table.remove(reactions, at) end
  msg.reactions = reactions
end
msg = tidy(msg)
local json = cjson.encode(msg)

redis.call('HSET', state_key, sseq, json)
redis.call('ZADD', changed_key, version, sseq)
redis.call('SADD', pending_key, room_id)
-- A drained room's keys carry an idle TTL (flush_commit): a change must outlive it until
-- flushed, and the counters and stream it was checked against with it.
redis.call('PERSIST', version_key)
redis.call('PERSIST', state_key)
redis.call('PERSIST', log_key)
redis.call('PERSIST', seq_key)
redis.call('PERSIST', flushed_key)
redis.call('PERSIST', members_key)
redis.call('PUBLISH', events_channel, event_prefix .. json .. event_suffix)
return {0, json, version}
