"""Seqs after a Redis rollback: move orphans to new seqs, raise counters after a restart.

A Redis that comes back behind PostgreSQL (a host crash with `appendfsync everysec`, a
replica promoted late) hands out seqs PostgreSQL already holds. The flush finds such rows
(app/flush/write.py: a conflicting seq whose message id PostgreSQL does not hold) and, after
its commit, RESEQ_LUA gives them new seqs; the flush tick raises every room's counter as
soon as Redis's run_id changes, so new sends stop colliding."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
from redis.asyncio import Redis

from app.store.cache import STREAM_TOP_LUA
from app.realtime.events import encode
from app.flush.write import Written
from app.store.keys import Keys
from app.settings import Settings

log = logging.getLogger("chat.flush")

# Give orphans (entries whose seq PostgreSQL holds for another message) new seqs, atomically.
# KEYS: 1 log, 2 seq, 3 pending_rooms, 3+k: the cid key of the k-th orphan that has one.
# ARGV: 1 floor (PostgreSQL's max seq / rooms.last_seq), 2 trim MINID (batch top + 1), 3 room id,
#       4 events channel, 5 client_id ttl s, 6 resync event payload, 7 orphan count, then per
#       orphan: old seq, message id, cid key index (0 = no client_id).
# Returns {old seq, new seq, ...} of the moved ones. An orphan whose old entry is gone (moved by
# an earlier run whose reply was lost) is left alone, so a rerun moves nothing twice; one whose
# entry no longer carries its id fails the script before any write.
RESEQ_LUA = STREAM_TOP_LUA + """
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[1])
if floor > cur then cur = floor end
local top = stream_top_seq(KEYS[1])
if top > cur then cur = top end
local n = tonumber(ARGV[7])
-- check every orphan before writing anything: an entry that is not the message the flush read
-- (rewritten meanwhile) aborts the move, `flushed` stays, and the next run judges it again
local todo = {}
for i = 0, n - 1 do
  local old = ARGV[8 + 3 * i]
  local e = redis.call('XRANGE', KEYS[1], old .. '-0', old .. '-0')
  if #e == 1 then
    local msg = e[1][2][2]
    if not string.find(msg, '"id":"' .. ARGV[9 + 3 * i] .. '"', 1, true) then
      return redis.error_reply('ERR reseq: the entry at seq ' .. old .. ' changed since it was read')
    end
    todo[#todo + 1] = {old, msg, tonumber(ARGV[10 + 3 * i])}
  end
end
local moved = {}
for _, o in ipairs(todo) do
  local old, msg, k = o[1], o[2], o[3]
  cur = cur + 1
  local sseq = string.format('%d', cur)
  local new
  local s, t = string.find(msg, ',"seq":' .. old .. ',', 1, true)
  if s then  -- the accept path's layout: only the number changes
    new = string.sub(msg, 1, s - 1) .. ',"seq":' .. sseq .. ',' .. string.sub(msg, t + 1)
  else
    local m = cjson.decode(msg)
    m['seq'] = cur
    new = cjson.encode(m)
  end
  redis.call('XADD', KEYS[1], sseq .. '-0', 'm', new)
  if k > 0 then redis.call('SET', KEYS[3 + k], sseq, 'EX', ARGV[5]) end
  redis.call('PUBLISH', ARGV[4], 'r:' .. ARGV[3] .. '||{"type":"message","message":' .. new .. '}')
  moved[#moved + 1] = tonumber(old)
  moved[#moved + 1] = cur
end
redis.call('SET', KEYS[2], string.format('%d', cur))
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PERSIST', KEYS[1])
  -- everything up to the batch is in PostgreSQL (or dead_letters): the orphans' old entries
  -- must stop shadowing the PostgreSQL rows of their seqs in history reads
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
end
if #moved > 0 then
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[6])
end
return moved
"""

# Raise an existing counter to at least ARGV[1] (a missing one is seeded on the next send), and
# drop the stream's entries up to `flushed` (all in PostgreSQL): left below the raised counter
# they would be a hole in what history reads from Redis.
# KEYS: 1 seq, 2 log, 3 flushed. Returns 1 raised, 0 already there, -1 missing.
RAISE_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  local flushed = tonumber(redis.call('GET', KEYS[3]) or '0')
  if flushed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('XTRIM', KEYS[2], 'MINID', flushed + 1)
  end
  return 1
end
return 0
"""


async def reseq(redis: Redis, keys: Keys, settings: Settings, room_id: str, records: list[tuple[Any, ...]],
                top: int, written: Written) -> list[tuple[int, int]]:
    """Move a committed batch's orphans to new seqs (RESEQ_LUA); [(old seq, new seq), ...].

    `records` are the batch's rows, `top` its highest seq: everything up to it is in
    PostgreSQL (or dead_letters) now, so the stream is trimmed up to it."""
    script_keys = [keys.room_log(room_id), keys.room_seq(room_id), keys.pending_rooms()]
    per: list[Any] = []
    for i in written.orphans:
        r = records[i]
        k = 0
        if r[7] is not None:
            script_keys.append(keys.room_client_id(room_id, r[3] or "-", r[7]))
            k = len(script_keys) - 3
        per += [int(r[2]), str(r[0]), k]
    resync = encode(f"r:{room_id}", {"type": "resync", "room_id": room_id, "reason": "redis_rollback"})
    args = [max(written.floor, top), top + 1, room_id, keys.events_channel(),
            settings.idempotency_ttl_s, resync, len(written.orphans), *per]
    flat = await redis.register_script(RESEQ_LUA)(keys=script_keys, args=args)
    moved = [(int(flat[j]), int(flat[j + 1])) for j in range(0, len(flat), 2)]
    for old, new in moved:
        log.warning("flush room=%s seq=%d: seq already taken in PostgreSQL by another message "
                    "(Redis rolled back); message moved to seq %d", room_id, old, new)
    return moved


# Rooms per SQL page and Redis pipeline when re-seeding after a Redis restart.
RESEED_PAGE = 1000
RESEED_SQL = """SELECT r.id,
  GREATEST(r.last_seq, COALESCE((SELECT MAX(seq) FROM messages m WHERE m.room_id = r.id), 0)) AS top
FROM rooms r WHERE r.id > $1 ORDER BY r.id LIMIT $2"""


async def check_redis_restart(*, redis: Redis, keys: Keys, pool: asyncpg.Pool) -> int | None:
    """After Redis restarted (new `run_id`), raise every room's counter to PostgreSQL's max.

    A Redis that comes back from an `appendfsync everysec` crash, or a promoted replica, may
    hold counters from before messages PostgreSQL already has; raising them at once keeps new
    sends off those seqs (a send that got one meanwhile is moved by the flush). `flushed` is
    never advanced here: entries Redis still holds are flushed, and orphans moved, as usual.
    Returns how many counters were raised, or None when Redis did not restart.
    """
    run_id = str((await redis.info("server")).get("run_id", ""))
    if not run_id or await redis.get(keys.redis_run_id()) == run_id:
        return None
    raise_script = redis.register_script(RAISE_LUA)
    raised, after = 0, uuid.UUID(int=0)
    while True:
        rows = await pool.fetch(RESEED_SQL, after, RESEED_PAGE)
        if not rows:
            break
        after = rows[-1]["id"]
        async with redis.pipeline(transaction=False) as pipe:
            todo = [r for r in rows if r["top"] > 0]
            for r in todo:
                rid = str(r["id"])
                await raise_script(keys=[keys.room_seq(rid), keys.room_log(rid), keys.room_flushed(rid)],
                                   args=[int(r["top"])], client=pipe)
            results = await pipe.execute() if todo else []
        raised += sum(1 for x in results if x == 1)
        if len(rows) < RESEED_PAGE:
            break
    await redis.set(keys.redis_run_id(), run_id)
    log.warning("Redis run_id changed (restart or failover): %d room counters raised to PostgreSQL's max seq",
                raised)
    return raised
