-- One atomic read for history: the stream's first id and a range of entries.
-- Returns {first_id or "", {seq, msg, seq, msg, ...}}.
local log_key = KEYS[1]

local direction = ARGV[1]                   -- "asc" | "desc"
local lowest = ARGV[2]                      -- lowest seq
local highest = ARGV[3]                     -- highest seq ("+" = no bound)
local count = ARGV[4]

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
return {first, out}
