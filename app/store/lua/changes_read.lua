-- The Redis half of "changed since V" (app/messages.changes_since), at one instant: every
-- unflushed change above after_version of a message with seq <= max_seq as {seq, version}
-- (all of them: the caller leaves these seqs out of its PostgreSQL query, whose rows for
-- them may be older), the latest state JSON of the first `want` by version, and the room's
-- change counter. Returns {version or '', {seq, version, ...}, {state json or '', ...}}.
local changed_key = KEYS[1]
local state_key = KEYS[2]
local version_key = KEYS[3]

local after_version = ARGV[1]
local max_seq = tonumber(ARGV[2])
local want = tonumber(ARGV[3])

local flat = redis.call('ZRANGEBYSCORE', changed_key, '(' .. after_version, '+inf', 'WITHSCORES')
local pairs_out, states = {}, {}
for i = 1, #flat, 2 do
  local s = tonumber(flat[i])
  if s and s <= max_seq then
    pairs_out[#pairs_out + 1] = flat[i]
    pairs_out[#pairs_out + 1] = flat[i + 1]
    if #states < want then
      states[#states + 1] = redis.call('HGET', state_key, flat[i]) or ''
    end
  end
end
return {redis.call('GET', version_key) or '', pairs_out, states}
