"""The Redis side of the hot path: client, keys, Lua scripts, the message cache, member sets, rate limits."""
