-- Re-create a lost change counter (app/store/changes.py): the higher of PostgreSQL's
-- GREATEST(rooms.last_version, MAX(messages.version)) and the newest unflushed change still
-- in `changed`, so no version a message already carries is handed out again. No-op when the
-- counter exists. Returns the counter's value.
local version_key = KEYS[1]
local changed_key = KEYS[2]

local pg_max = tonumber(ARGV[1])

local cur = redis.call('GET', version_key)
if cur then return tonumber(cur) end
local v = pg_max
local top = redis.call('ZREVRANGE', changed_key, 0, 0, 'WITHSCORES')
if #top == 2 and tonumber(top[2]) > v then v = tonumber(top[2]) end
redis.call('SET', version_key, string.format('%d', v))
return v
