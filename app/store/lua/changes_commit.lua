-- After a changes batch committed in PostgreSQL (app/flush/changes.py): forget what was written.
-- ARGV: pairs (seq, version) PostgreSQL now holds (or set aside in dead_letters).
-- A seq leaves `changed` only if its score is still that version: a change that arrived
-- while the batch was written has a higher score and stays for the next run. Its overlay
-- entry goes too, but only once the stream no longer holds the message (a cached entry is
-- the original: reads need the overlay on top of it until it is trimmed; flush_commit drops
-- the entry then). Returns how many seqs left `changed`.
local changed_key = KEYS[1]
local state_key = KEYS[2]
local log_key = KEYS[3]

local first = nil                           -- the stream's first seq; nil = empty or missing
local head = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1]
if head then first = tonumber(string.match(head[1], '^(%d+)')) end

local removed = 0
for i = 1, #ARGV, 2 do
  local seq = ARGV[i]
  local score = redis.call('ZSCORE', changed_key, seq)
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', changed_key, seq)
    removed = removed + 1
    if not first or tonumber(seq) < first then redis.call('HDEL', state_key, seq) end
  end
end
return removed
