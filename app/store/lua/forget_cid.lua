-- Drop a cid key that points at a seq no longer stored anywhere (its entry was set aside).
-- Returns 1 dropped, 0 not (it points elsewhere now).
local cid_key = KEYS[1]
local seq = ARGV[1]                         -- the seq it must still hold

if redis.call('GET', cid_key) == seq then return redis.call('DEL', cid_key) end
return 0
