-- After read markers committed in PostgreSQL (app/flush/changes.py): a user leaves `rdirty`
-- only if `reads` still holds the value written (a marker that moved meanwhile stays dirty
-- for the next run; one whose value is gone has nothing left to write).
-- ARGV: pairs (user_id, value written). Returns how many users left `rdirty`.
local reads_key = KEYS[1]
local rdirty_key = KEYS[2]

local removed = 0
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', reads_key, ARGV[i])
  if not cur or cur == ARGV[i + 1] then
    removed = removed + redis.call('SREM', rdirty_key, ARGV[i])
  end
end
return removed
