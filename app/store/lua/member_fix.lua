-- Repair listed users of a loaded member set against a PostgreSQL snapshot taken at a version:
-- add or remove each, unless a change of theirs newer than the snapshot already landed.
-- Returns how many changed (-1: no set, or the room is gone).
local members_key = KEYS[1]
local mvers_key = KEYS[2]
local mver_key = KEYS[3]

local snapshot_version = tonumber(ARGV[1])
local op = ARGV[2]                          -- "+" add, "-" remove
local first_user = 3                        -- ARGV[3..] are the user ids

if redis.call('EXISTS', mver_key) == 0 or redis.call('EXISTS', members_key) == 0 then return -1 end
local n = 0
for i = first_user, #ARGV do
  local e = redis.call('HGET', mvers_key, ARGV[i])
  if not e or math.abs(tonumber(e)) <= snapshot_version then
    if op == '+' then n = n + redis.call('SADD', members_key, ARGV[i])
    else n = n + redis.call('SREM', members_key, ARGV[i]) end
  end
end
return n
