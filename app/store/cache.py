"""The per-room message cache in Redis: the accept script, the read script, counter seeding.

Layout (see app/store/keys.py): `seq` counter, `log` stream with entry ids "<seq>-0"
and field "m" holding the message JSON exactly as the API renders it, `flushed`
(written by the worker), `members` set, `cid:<sender>:<client_id>` keys (the seq a client_id produced),
`flush_queued`, and the global `pending_rooms` set and events channel.

Accepting a message is ONE script call (one round trip, atomic): member check,
idempotency, rate limit, seq allocation, append, publish. Because the seq is
allocated, appended and published inside one script, concurrent senders in
any number of processes get gap-free seqs, and every subscriber sees a room's
messages published in seq order.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError, DataError, NoScriptError, ResponseError

from app.store.keys import Keys
from app.store.ratelimit import RATE_HIT_LUA

# Result codes of the accept script.
OK, DUPLICATE, MEMBERS_MISSING, NOT_MEMBER, RATE_LIMITED, SEQ_MISSING = 0, 1, 2, 3, 4, 5

# KEYS: 1 members, 2 rate counter, 3 cid key, 4 seq, 5 log, 6 flushed, 7 pending_rooms, 8 flush_queued
# ARGV: 1 sender ("" = system message: no member check), 2 rate limit (0 = off), 3 rate window ms,
#       4 idempotency ttl s, 5 JSON before the seq, 6 JSON after the seq, 7 event head (route,
#       exclude and frame up to the message), 8 room id, 9 events channel, 10 backlog threshold,
#       11 flush_queued ttl s, 12 "1" when a client_id is given
# Returns {0, msg, backlog, flush_queued_now} | {1, stored msg or "", seq} | {2} | {3} | {4, retry ms} | {5}
# Nothing is written before the last check passes, so a rejected send consumes no seq.
# The cid key holds only the seq: a retry gets the entry from the stream while it is there
# ("" once trimmed: the caller reads that seq from PostgreSQL). A key written before this
# change holds the whole message JSON, returned as it is.
# A drained room's keys carry an idle TTL (set by the flush): a send removes it, tried on
# the log first (one call when there is none; the log is the key that must never expire
# with unflushed entries).
ACCEPT_LUA = RATE_HIT_LUA + """
local sender = ARGV[1]
if sender ~= '' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end
  if redis.call('SISMEMBER', KEYS[1], sender) == 0 then return {3} end
end
local has_cid = ARGV[12] == '1'
if has_cid then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    if string.byte(prev, 1) == 123 then return {1, prev, -1} end
    local e = redis.call('XRANGE', KEYS[5], prev .. '-0', prev .. '-0')
    if #e == 1 then return {1, e[1][2][2], prev} end
    return {1, '', prev}
  end
end
if redis.call('EXISTS', KEYS[4]) == 0 then return {5} end
local limit = tonumber(ARGV[2])
if limit > 0 then
  local wait = rate_hit(KEYS[2], limit, ARGV[3])
  if wait > 0 then return {4, wait} end
end
if redis.call('PERSIST', KEYS[5]) == 1 then
  redis.call('PERSIST', KEYS[4])
  redis.call('PERSIST', KEYS[6])
  redis.call('PERSIST', KEYS[1])
end
local seq = redis.call('INCR', KEYS[4])
local sseq = string.format('%d', seq)
local msg = ARGV[5] .. sseq .. ARGV[6]
redis.call('XADD', KEYS[5], sseq .. '-0', 'm', msg)
if has_cid then redis.call('SET', KEYS[3], sseq, 'EX', ARGV[4]) end
redis.call('SADD', KEYS[7], ARGV[8])
redis.call('PUBLISH', ARGV[9], ARGV[7] .. msg .. '}')
local backlog = seq - tonumber(redis.call('GET', KEYS[6]) or '0')
local queued = 0
if backlog >= tonumber(ARGV[10]) then
  if redis.call('SET', KEYS[8], '1', 'NX', 'EX', ARGV[11]) then queued = 1 end
end
return {0, msg, backlog, queued}
"""

# Shared by the scripts that must stay above every seq a stream ever held: the seq of the
# stream's last generated id (kept by Redis even after trimming), 0 for no stream.
STREAM_TOP_LUA = """
local function stream_top_seq(key)
  if redis.call('EXISTS', key) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return tonumber(string.match(info[i + 1], '^(%d+)')) or 0
    end
  end
  return 0
end
"""

# Re-create a lost counter: the highest of PostgreSQL's max seq (ARGV[1]), the stream's
# last generated id (kept by Redis even after trimming) and the flushed mark, so that a
# seq PostgreSQL or the stream already holds is never handed out again.
# KEYS: 1 seq, 2 log, 3 flushed. Returns the counter's value.
SEED_LUA = STREAM_TOP_LUA + """
local cur = redis.call('GET', KEYS[1])
if cur then return tonumber(cur) end
local v = tonumber(ARGV[1])
local top = stream_top_seq(KEYS[2])
if top > v then v = top end
local f = tonumber(redis.call('GET', KEYS[3]) or '0')
if f > v then v = f end
redis.call('SET', KEYS[1], string.format('%d', v))
return v
"""

# One atomic read for history: the stream's first id and a range of entries.
# KEYS: 1 log. ARGV: 1 "asc"|"desc", 2 lowest seq, 3 highest seq ("+" = no bound), 4 count.
# Returns {first_id or "", {seq, msg, seq, msg, ...}}.
READ_LUA = """
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = ''
if #head > 0 then first = head[1][1] end
local rows
if ARGV[1] == 'asc' then
  rows = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
else
  rows = redis.call('XREVRANGE', KEYS[1], ARGV[3], ARGV[2], 'COUNT', ARGV[4])
end
local out = {}
for i = 1, #rows do
  out[#out + 1] = rows[i][1]
  out[#out + 1] = rows[i][2][2]
end
return {first, out}
"""


def _seq_of(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class Script:
    """A Lua script run by SHA1 (EVALSHA), loaded into Redis on first use or after a restart."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


class _Batcher:
    """Runs accept scripts for one Redis client on a connection of its own, pipelined.

    Concurrent sends of a process share round trips: while one batch is on the wire the
    next ones queue, and go out together in one write (Redis runs them in order, each
    atomically). No automatic retry: the script is not idempotent without a client_id,
    and a silent replay after a lost reply would append the same message twice. A send
    whose reply is lost fails (503 / error frame) and the client retries with its client_id.

    The commands are packed by hand as RESP (`_pack_evalshas`) and written on the held connection
    without redis-py's per-call health check coroutine (its idle test is inlined); a write or
    read error disconnects the connection, so the next batch reconnects.

    One drain loop per batcher and event loop, parked on a future while the queue is empty
    (a task per batch cost a task creation and its scheduling on every round trip).
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn: Any = None
        self.queue: list[tuple[Script, int, list[Any], asyncio.Future[Any]]] = []
        self.task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while the loop waits for work

    async def call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.queue.append((script, len(keys), [*keys, *args], fut))
        wake = self._wake
        if wake is not None and wake.get_loop() is loop:
            self._wake = None
            if not wake.done():
                wake.set_result(None)
        elif self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self._wake = None  # a loop parked on another (closed) event loop is abandoned
            self.task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.queue:
                    self._wake = wake = loop.create_future()
                    await wake
                    continue
                batch, self.queue = self.queue, []
                try:
                    await self._run(batch)
                except BaseException as exc:  # noqa: BLE001 - fail the batch, never hang a sender
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(str(exc)))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            self._wake = None
            for *_, fut in self.queue:  # queued while the loop was being cancelled
                if not fut.done():
                    fut.set_exception(RedisConnectionError("accept batcher stopped"))
            self.queue = []

    async def _run(self, batch: list[tuple[Script, int, list[Any], asyncio.Future[Any]]]) -> None:
        if self.conn is None:
            self.conn = await self.pool.get_connection()  # held for good; pool.disconnect() closes it
        conn = self.conn
        try:
            # The health check's own test, inline: a PING only after the connection sat idle
            # (redis-py's check_health coroutine ran on every batch, for nothing in the hot path).
            if conn.is_connected and conn.health_check_interval \
                    and asyncio.get_running_loop().time() > conn.next_health_check:
                await conn.check_health()
            await conn.send_packed_command(_pack_evalshas(batch), check_health=False)
        except BaseException:
            await conn.disconnect()  # the stream's state is unknown; the next batch reconnects
            raise
        missing: list[tuple[Script, int, list[Any], asyncio.Future[Any]]] = []
        # Each reply goes to its sender as soon as it is read: a script that ran is answered even
        # when a later reply of the batch is an error or never comes (the caller fails only the
        # futures still pending). An error reply (OOM, READONLY, a script error) fails only its own.
        for item in batch:
            try:
                reply = await conn.read_response()
            except ResponseError as err:
                reply = err
            except BaseException:
                await conn.disconnect()
                raise
            fut = item[3]
            if fut.done():
                continue
            if isinstance(reply, NoScriptError):  # not run at all: load it and run again
                missing.append(item)
            elif isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)
        if missing:
            for source in {item[0].source for item in missing}:
                await conn.send_command("SCRIPT", "LOAD", source)
                await conn.read_response()
            self.queue[:0] = missing


def _pack_evalshas(batch: list[tuple[Script, int, list[Any], asyncio.Future[Any]]]) -> bytes:
    """The batch's EVALSHA commands as one RESP buffer (redis-py's generic pack_commands and
    Encoder.encode cost ~3x as much); str args as UTF-8, ints in decimal, like its encoder."""
    out: list[bytes] = []
    add = out.append
    for script, nkeys, argv, _ in batch:
        add(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%d\r\n"
            % (len(argv) + 3, script.sha.encode(), len(str(nkeys)), nkeys))
        for arg in argv:
            kind = type(arg)
            if kind is str:
                b = arg.encode()
            elif kind is int:
                b = b"%d" % arg
            elif kind is bytes:
                b = arg
            elif kind is float:
                b = repr(arg).encode()
            else:
                raise DataError(f"Invalid input of type {kind.__name__!r} in an accept script call.")
            add(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


_batchers: "weakref.WeakKeyDictionary[Redis, _Batcher]" = weakref.WeakKeyDictionary()


def _batcher(redis: Redis) -> _Batcher:
    b = _batchers.get(redis)
    if b is None:
        b = _batchers[redis] = _Batcher(redis.connection_pool)
    return b


# Drop a cid key that points at a seq no longer stored anywhere (its entry was set aside).
# KEYS: 1 cid key. ARGV: 1 the seq it must still hold.
FORGET_CID_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_accept = Script(ACCEPT_LUA)
_forget_cid = Script(FORGET_CID_LUA)
_seed = Script(SEED_LUA)
_read = Script(READ_LUA)


@dataclass(frozen=True)
class AcceptResult:
    code: int
    message: str = ""  # the message JSON (OK; DUPLICATE while the stream still holds it, else "")
    backlog: int = 0
    flush_queued: bool = False
    retry_ms: int = 0
    seq: int = 0  # DUPLICATE: the seq the client_id produced (-1: an old key, message given)


@dataclass(frozen=True)
class CacheRange:
    """What the read script saw: the stream's first seq (None: stream empty) and entries."""

    first_seq: int | None
    entries: list[tuple[int, str]]  # (seq, message JSON) in the requested direction


async def accept(redis: Redis, keys: Keys, *, room_id: str, sender_id: str | None, client_id: str | None,
                 prefix: str, suffix: str, event_head: str, rate_limit: int, rate_window_s: int,
                 idempotency_ttl_s: int, backlog_threshold: int, flush_queued_ttl_s: int) -> AcceptResult:
    """Run the accept script once: the message JSON is prefix + seq + suffix."""
    sender = sender_id or ""
    script_keys = [
        keys.room_members(room_id), keys.rate("msg", sender or "-"),
        keys.room_client_id(room_id, sender or "-", client_id or "-"),
        keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id),
        keys.pending_rooms(), keys.room_flush_queued(room_id),
    ]
    args = [sender, rate_limit, rate_window_s * 1000, idempotency_ttl_s, prefix, suffix, event_head,
            room_id, keys.events_channel(), backlog_threshold, flush_queued_ttl_s, "1" if client_id else ""]
    res: list[Any] = await _batcher(redis).call(_accept, script_keys, args)
    code = int(res[0])
    if code == OK:
        return AcceptResult(OK, res[1], int(res[2]), bool(int(res[3])))
    if code == DUPLICATE:
        return AcceptResult(DUPLICATE, res[1], seq=int(res[2]))
    if code == RATE_LIMITED:
        return AcceptResult(RATE_LIMITED, retry_ms=int(res[1]))
    return AcceptResult(code)


async def forget_client_id(redis: Redis, keys: Keys, room_id: str, sender_id: str | None, client_id: str | None,
                           seq: int) -> None:
    """Forget a client_id whose message is neither in the stream nor in PostgreSQL."""
    await _forget_cid(redis, [keys.room_client_id(room_id, sender_id or "-", client_id or "-")], [str(seq)])


async def seed_seq(redis: Redis, keys: Keys, room_id: str, pg_max: int) -> int:
    """Re-create a lost counter (no-op when it exists); returns its value."""
    return int(await _seed(redis, [keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id)],
                           [int(pg_max)]))


async def read(redis: Redis, keys: Keys, room_id: str, *, ascending: bool, lo: int, hi: int | None,
               count: int) -> CacheRange:
    """Entries with lo <= seq <= hi (hi None = no bound), at most `count`, plus the stream's first seq."""
    args = ["asc" if ascending else "desc", max(lo, 0), "+" if hi is None else hi, count]
    first, flat = await _read(redis, [keys.room_log(room_id)], args)
    entries = [(_seq_of(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
    return CacheRange(_seq_of(first) if first else None, entries)


async def counters(redis: Redis, keys: Keys, room_ids: list[str]) -> list[int | None]:
    """Each room's seq counter (None where Redis has lost it), in one pipelined round trip."""
    if not room_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for rid in room_ids:
            pipe.get(keys.room_seq(rid))
        values = await pipe.execute()
    return [int(v) if v is not None else None for v in values]
