-- One atomic read for history: the stream's first id, a range of entries, the change overlay
-- (`state`) for the page's seq window and the room's change counter, all at one instant, so
-- an entry and the overlay that outranks it can never come from two sides of a change.
-- Returns {first_id or "", {seq, msg, ...}, {seq, state json, ...}, version or "", window lo, window hi}.
-- With a member set (KEYS[5]) and a user (ARGV[8]): the read is only for a member the set knows
-- (its sentinel "*" present: the set is loaded); otherwise {"!"} and nothing is read, and the
-- caller asks the full membership check (app/access.py). A sync's check and read, one round trip.
local log_key = KEYS[1]
local state_key = KEYS[2]
local version_key = KEYS[3]
local seq_key = KEYS[4]
local members_key = KEYS[5]

local direction = ARGV[1]                   -- "asc" | "desc"
local lowest = ARGV[2]                      -- lowest seq
local highest = ARGV[3]                     -- highest seq ("+" = no bound)
local count = ARGV[4]
local win_lo = tonumber(ARGV[5])            -- the overlay window (the page's possible seqs)
local win_hi = ARGV[6]                      -- "+" = the room's last seq
local width = tonumber(ARGV[7])             -- at most this many seqs below a "+" top
local member = ARGV[8]                      -- with KEYS[5]: read only for this member

if members_key then
  local known = redis.call('SMISMEMBER', members_key, '*', member)
  if known[1] == 0 or known[2] == 0 then return {'!'} end
end

local head = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)
local first = ''
if #head > 0 then first = head[1][1] end
local rows
if direction == 'asc' then
  rows = redis.call('XRANGE', log_key, lowest, highest, 'COUNT', count)
else
  rows = redis.call('XREVRANGE', log_key, highest, lowest, 'COUNT', count)
end
local out = {}
for i = 1, #rows do
  out[#out + 1] = rows[i][1]
  out[#out + 1] = rows[i][2][2]
end

local hi
if win_hi == '+' then
  hi = tonumber(redis.call('GET', seq_key) or '0')
  if hi - width + 1 > win_lo then win_lo = hi - width + 1 end
else
  -- No changed message lies past the room's last seq: the window ends there (which also keeps
  -- a seq near 2^63, where Lua's doubles lose integers, out of the arithmetic below).
  hi = tonumber(win_hi)
  local top = tonumber(redis.call('GET', seq_key) or '0')
  if hi > top then hi = top end
end
local overlay = {}
local size = hi - win_lo + 1
local n = redis.call('HLEN', state_key)
if n > 0 and size > 0 then
  if n <= size then
    -- Fewer changed messages than seqs in the window: read them all and keep the window's.
    local all = redis.call('HGETALL', state_key)
    for i = 1, #all, 2 do
      local s = tonumber(all[i])
      if s and s >= win_lo and s <= hi then
        overlay[#overlay + 1] = all[i]
        overlay[#overlay + 1] = all[i + 1]
      end
    end
  else
    -- Counted, not `for s = win_lo, hi`: Lua numbers are doubles, and past 2^53 s + 1 == s
    -- (GET .../messages/9223372036854775806 looped forever and blocked Redis). size < n here.
    local fields = {}
    for i = 0, size - 1 do fields[#fields + 1] = string.format('%d', win_lo + i) end
    local vals = redis.call('HMGET', state_key, unpack(fields))
    for i = 1, #fields do
      if vals[i] then
        overlay[#overlay + 1] = fields[i]
        overlay[#overlay + 1] = vals[i]
      end
    end
  end
end
if size <= 0 then win_lo, hi = 0, -1 end      -- an empty window covers no seq
return {first, out, overlay, redis.call('GET', version_key) or '', win_lo, hi}
