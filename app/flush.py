"""Write-behind flush: move a room's cached messages from its Redis stream into PostgreSQL.

Detach, write, then trim. One run per room at a time (a short lease, renewed each batch).
Each batch reads up to FLUSH_BATCH_SIZE entries after `flushed` and writes them in one
transaction: straight COPY into `messages` when that is safe, else COPY into a staging
table and INSERT ... SELECT ... ON CONFLICT DO NOTHING. The same transaction raises
`rooms.last_seq` to the batch's top seq. Only after the commit does one Lua script advance
`flushed`, trim the stream below it (keeping the newest CACHE_TAIL entries for reads) and
drop the room from the pending set once nothing is left (with an idle TTL on its keys).

No poison: an entry that does not parse, or rows PostgreSQL refuses for their data (SQLSTATE
class 22, e.g. a NUL in a body), go to `dead_letters` in the transaction that commits the
rest of the batch (found by bisecting the batch under savepoints), so `flushed` may pass them.

No silent drop after a Redis rollback: a conflicting (room_id, seq) whose message id is not
in PostgreSQL is an orphan (Redis re-issued a seq PostgreSQL holds). After the commit, one
script (RESEQ_LUA) raises the counter above PostgreSQL's max, re-appends each orphan under a
new seq (same id and client_id), trims the stream up to the batch so nothing shadows the
PostgreSQL rows, and publishes the moved messages plus a `resync` event. The normal commit
script then advances `flushed`; the moved messages are flushed by a later batch.

A crash anywhere leaves `flushed` at or below what PostgreSQL holds: the next run re-reads
at most one batch and the unique (room_id, seq) turns the rewrite into a no-op (orphans are
found again and moved; the move itself is idempotent, it checks the old entry is still
there). Losing the lease (a stalled batch outlived it) is harmless for the same reason."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from redis.asyncio import ConnectionPool, Redis

from app.events import encode
from app.keys import Keys
from app.serialize import loads
from app.settings import Settings

log = logging.getLogger("chat.flush")

# A run stops after this long even if the room keeps receiving messages; the room stays
# pending, so the next tick (or backlog trigger) continues. Keeps one hot room from
# pinning a worker thread forever.
MAX_RUN_S = 60.0

# KEYS: log, flushed, seq, pending, lease, members.
# ARGV: batch_max, cache_tail, room_id, token, lease_ms, idle_ttl_s.
# Returns {flushed, drained, lease_held}.
COMMIT_LUA = """
local flushed = tonumber(redis.call('GET', KEYS[2]) or '0')
local batch_max = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- the room's cache is gone (room deleted): nothing left to flush or to track
  redis.call('SREM', KEYS[4], ARGV[3])
  return {flushed, 1, 1}
end
if batch_max > flushed then
  flushed = batch_max
  redis.call('SET', KEYS[2], flushed)
end
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
-- trim only what PostgreSQL has committed, and never the newest cache_tail entries
local minid = math.min(flushed + 1, last - tonumber(ARGV[2]) + 1)
if minid > 1 then
  redis.call('XTRIM', KEYS[1], 'MINID', minid)
end
-- History reads the stream from its first entry on and PostgreSQL only below it, so the stream
-- must not have holes. A counter raised over a Redis rollback leaves one between the old tail
-- and the new entries: drop that tail (everything up to `flushed` is in PostgreSQL).
local n = redis.call('XLEN', KEYS[1])
if n > 0 then
  local lo = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
  local hi = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
  local span = tonumber(string.match(hi, '^(%d+)')) - tonumber(string.match(lo, '^(%d+)')) + 1
  if span ~= n then redis.call('XTRIM', KEYS[1], 'MINID', flushed + 1) end
end
local drained = 0
if flushed >= last then
  redis.call('SREM', KEYS[4], ARGV[3])
  drained = 1
  -- everything is in PostgreSQL: an idle room's keys may go (the accept script PERSISTs them)
  local ttl = tonumber(ARGV[6])
  if ttl > 0 then
    for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
    redis.call('EXPIRE', KEYS[6], ttl)
  end
end
-- renew the lease; re-take it if it lapsed during a slow batch, unless someone else has it
local held = 0
local holder = redis.call('GET', KEYS[5])
if holder == ARGV[4] or not holder then
  redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5])
  held = 1
end
return {flushed, drained, held}
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Give orphans (entries whose seq PostgreSQL holds for another message) new seqs, atomically.
# KEYS: 1 log, 2 seq, 3 pending_rooms, 3+k: the cid key of the k-th orphan that has one.
# ARGV: 1 floor (PostgreSQL's max seq / rooms.last_seq), 2 trim MINID (batch top + 1), 3 room id,
#       4 events channel, 5 client_id ttl s, 6 resync event payload, 7 orphan count, then per
#       orphan: old seq, message id, cid key index (0 = no client_id).
# Returns {old seq, new seq, ...} of the moved ones. An orphan whose old entry is gone (moved by
# an earlier run whose reply was lost) is left alone, so a rerun moves nothing twice; one whose
# entry no longer carries its id fails the script before any write.
RESEQ_LUA = """
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[1])
if floor > cur then cur = floor end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local s = tonumber(string.match(info[i + 1], '^(%d+)'))
      if s and s > cur then cur = s end
    end
  end
end
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

COLUMNS = ("id", "room_id", "seq", "sender_id", "kind", "body", "file_id", "client_id", "created_at")

# What PostgreSQL or asyncpg's encoder raise for a row's data: SQLSTATE class 22 (NUL in text,
# too long, out of range) server side; ValueError (bad UUID, lone surrogate), TypeError and
# OverflowError client side. Unique and foreign-key violations (class 23) are not here.
DATA_ERRORS = (asyncpg.DataError, ValueError, TypeError, OverflowError)

# Temp tables are per session, and asyncpg's pool keeps sessions: created once per
# connection, emptied by every commit. Sent with BEGIN in one round trip.
BEGIN_SQL = """BEGIN;{skip_fk}
CREATE TEMP TABLE IF NOT EXISTS chat_flush_stage (
  id uuid, room_id uuid, seq bigint, sender_id uuid, kind text, body text,
  file_id uuid, client_id text, created_at timestamptz
) ON COMMIT DELETE ROWS"""

# Per-row foreign-key triggers cost more than the insert itself (about 60% of a batch).
# Both write paths take the locks those triggers would take (KEY SHARE on the room, the
# senders and the files) once per batch and never write a reference they did not lock,
# so the triggers are redundant; where the database role may (a superuser, or PostgreSQL
# 15+ `GRANT SET ON PARAMETER session_replication_role`), the flush transaction turns
# them off. It also turns off any other trigger on `messages`: there are none, and one
# added later must be added to these statements instead. Other roles keep the triggers.
SKIP_FK_SQL = "\nSET LOCAL session_replication_role = replica;"

# The direct path (the common case: nothing of the batch in PostgreSQL yet, every
# reference alive) locks the references and checks they all exist; if one is missing it
# raises, and the batch goes the staging way, which drops or nulls it. Ids are inlined
# as canonical UUID text (uuid.UUID re-formats them), so BEGIN, the role switch and this
# check share one round trip: 3 per batch (BEGIN+check, COPY, last_seq+COMMIT).
CHECK_REFS_SQL = """
DO $$
DECLARE n bigint;
BEGIN
  PERFORM 1 FROM rooms WHERE id = '{room}' FOR KEY SHARE;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n <> 1 THEN RAISE foreign_key_violation; END IF;{more}
END $$"""
CHECK_MORE_SQL = """
  PERFORM 1 FROM {table} WHERE id IN ({ids}) FOR KEY SHARE;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n <> {count} THEN RAISE foreign_key_violation; END IF;"""

# Rows of a room deleted meanwhile are dropped; a deleted sender or file becomes NULL (as
# ON DELETE SET NULL would have done). A delete that commits first is not seen by the
# locks; one that comes later waits for our commit and then cascades as usual.
# ON CONFLICT without a target: a seq taken (re-run, or a Redis rollback) and an id already
# stored at another seq (a message moved by RESEQ_LUA, seen again after a second rollback)
# are both skipped here and judged below. The stage is emptied in the same statement (the
# careful path reuses it per chunk). Returns the orphans: rows not inserted whose id
# PostgreSQL does not hold (the sub-select sees the table as before this INSERT).
INSERT_STAGED_SQL = """WITH
  r AS (SELECT id FROM rooms WHERE id IN (SELECT room_id FROM chat_flush_stage) FOR KEY SHARE),
  u AS (SELECT id FROM users WHERE id IN (SELECT sender_id FROM chat_flush_stage) FOR KEY SHARE),
  f AS (SELECT id FROM files WHERE id IN (SELECT file_id FROM chat_flush_stage) FOR KEY SHARE),
  ins AS (
    INSERT INTO messages (id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at)
    SELECT s.id, s.room_id, s.seq, u.id, s.kind, s.body, f.id, s.client_id, s.created_at
    FROM chat_flush_stage s
    JOIN r ON r.id = s.room_id
    LEFT JOIN u ON u.id = s.sender_id
    LEFT JOIN f ON f.id = s.file_id
    ON CONFLICT DO NOTHING
    RETURNING seq),
  del AS (DELETE FROM chat_flush_stage)
SELECT s.seq FROM chat_flush_stage s JOIN r ON r.id = s.room_id
WHERE s.seq NOT IN (SELECT seq FROM ins)
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = s.id)"""

# Ends every write: the room's last_seq follows what the flush wrote (a counter re-seeded from
# PostgreSQL then stays above seqs the retention prune deleted). Inlined (a UUID re-formatted
# by uuid.UUID and an int) so it shares COMMIT's round trip; no write when already there.
LAST_SEQ_SQL = "UPDATE rooms SET last_seq = {top} WHERE id = '{room}' AND last_seq < {top}"

DEAD_SQL = """INSERT INTO dead_letters (room_id, seq, message_id, entry, digest, error, created_at)
VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (room_id, seq, digest) DO NOTHING"""

# PostgreSQL's view of the room's highest seq (orphan path only).
FLOOR_SQL = """SELECT GREATEST(r.last_seq, COALESCE((SELECT MAX(seq) FROM messages m WHERE m.room_id = r.id), 0))
FROM rooms r WHERE r.id = $1"""

# Whether this process's database role may skip the triggers: None until tried.
_skip_fk: dict[str, bool | None] = {"allowed": None}


@dataclass
class FlushResult:
    """What one flush run of a room did."""

    room_id: str
    rows: int = 0  # cache entries written (new to PostgreSQL, or already there after a crash)
    batches: int = 0
    ms: float = 0.0
    flushed: int = 0  # the room's `flushed` seq when the run ended
    busy: bool = False  # another worker held the room's lease: nothing done
    drained: bool = False  # nothing left to flush when the run ended
    skipped: int = 0  # entries set aside in dead_letters (unparseable, or refused by PostgreSQL)
    reseq: int = 0  # orphans given a new seq (Redis had re-issued seqs PostgreSQL holds)


@dataclass
class DeadRow:
    """A cache entry set aside: what goes into `dead_letters`."""

    seq: int
    message_id: str | None
    entry: bytes
    error: str


@dataclass
class _Batch:
    entries: int  # stream entries read
    records: list[tuple[Any, ...]]  # rows for COPY
    raws: list[str]  # each record's "m" field as read (for a dead letter)
    top: int  # highest seq read (the `after` we read from when nothing was there)
    dead: list[DeadRow] = field(default_factory=list)  # entries that did not parse


@dataclass
class Written:
    """What one batch's transaction did."""

    path: str  # "copy", "stage" or "careful" (bisected after a data error); "" = no rows
    orphans: list[int] = field(default_factory=list)  # indexes into the records
    dead: list[DeadRow] = field(default_factory=list)  # every row set aside (read or write)
    floor: int = 0  # PostgreSQL's highest seq of the room (set when there are orphans)


def _raw_reader(redis: Redis) -> Redis:
    """A client on the same pool whose XRANGE replies stay as Redis sends them.

    redis-py turns every stream entry into a dict, about a fifth of the flush's Python
    time; the raw reply is [[entry_id, [field, value, ...]], ...]. Shares the pool (and
    its decode_responses), so it opens no connection of its own and needs no closing.
    """
    raw = Redis(connection_pool=redis.connection_pool)
    raw.set_response_callback("XRANGE", lambda response, **options: response)
    return raw


def _message_json(fields: list[str]) -> str:
    """The "m" field of a raw stream entry (the only field the accept path writes)."""
    if fields[0] == "m":
        return fields[1]
    return dict(zip(fields[::2], fields[1::2]))["m"]


def _entry_bytes(fields: list[Any]) -> bytes:
    """The entry as stored for a dead letter: the "m" field, or every field when it has none."""
    def b(v: Any) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass")
    if len(fields) == 2 and b(fields[0]) == b"m":
        return b(fields[1])
    return b"\n".join(b(k) + b"=" + b(v) for k, v in zip(fields[::2], fields[1::2]))


def _id_or_none(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except (TypeError, ValueError, AttributeError):
        return None


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"[:2000]
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


async def _read(raw: Redis, keys: Keys, room_id: str, after: int, count: int) -> _Batch:
    """The next `count` cache entries after seq `after`, parsed into rows (`raw`: _raw_reader)."""
    try:
        entries = await raw.xrange(keys.room_log(room_id), min=str(after + 1), max="+", count=count)
    except UnicodeDecodeError:
        # An entry that is not UTF-8 (nothing the accept path writes): read this batch as bytes.
        entries = await _read_bytes(raw, keys, room_id, after, count)
    records: list[tuple[Any, ...]] = []
    raws: list[str] = []
    dead: list[DeadRow] = []
    top = after
    for entry_id, fields in entries:
        seq = int(entry_id.partition("-")[0])
        top = seq
        m: Any = None
        try:
            js = _message_json(fields)
            if isinstance(js, bytes):
                js = js.decode("utf-8")
            m = loads(js)
            f = m.get("file")
            records.append((m["id"], room_id, seq, m.get("sender_id"), m["kind"], m.get("body") or "",
                            f["id"] if f else None, m.get("client_id"),
                            datetime.fromisoformat(m["created_at"])))
            raws.append(js)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # Skipping would lose it silently; refusing would block every later message of the
            # room and grow Redis without bound. Set aside, committed with the rest of the batch.
            mid = _id_or_none(m.get("id")) if isinstance(m, dict) else None
            dead.append(DeadRow(seq, mid, _entry_bytes(fields), _error_text(exc)))
    return _Batch(len(entries), records, raws, top, dead)


async def _read_bytes(raw: Redis, keys: Keys, room_id: str, after: int, count: int) -> list[Any]:
    """The same XRANGE on a short-lived bytes client; entry ids decoded, fields left as bytes."""
    kwargs = {**raw.connection_pool.connection_kwargs, "decode_responses": False}
    pool = ConnectionPool(connection_class=raw.connection_pool.connection_class, **kwargs)
    client = Redis(connection_pool=pool)
    client.set_response_callback("XRANGE", lambda response, **options: response)
    try:
        reply = await client.execute_command("XRANGE", keys.room_log(room_id), str(after + 1), "+",
                                             "COUNT", count)
    finally:
        await client.aclose()
        await pool.disconnect()
    out = []
    for entry_id, fields in reply:
        decoded = []
        for v in fields:
            try:
                decoded.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(v)  # stays bytes: _read sets the entry aside
        out.append((entry_id.decode(), decoded))
    return out


def _check_refs_sql(room_id: str, records: list[tuple[Any, ...]]) -> str:
    more = ""
    for table, col in (("users", 3), ("files", 6)):
        ids = {str(uuid.UUID(r[col])) for r in records if r[col] is not None}
        if ids:
            more += CHECK_MORE_SQL.format(table=table, ids=",".join(f"'{i}'" for i in sorted(ids)),
                                          count=len(ids))
    return CHECK_REFS_SQL.format(room=uuid.UUID(room_id), more=more)


def _dead_of(record: tuple[Any, ...], raw: str | None, exc: BaseException) -> DeadRow:
    entry = (raw if raw is not None else repr(record)).encode("utf-8", "surrogatepass")
    return DeadRow(int(record[2]), _id_or_none(record[0]), entry, _error_text(exc))


async def _finish(conn: Any, room_id: str, top: int, dead: list[DeadRow], with_floor: bool) -> int:
    """Dead letters, last_seq and COMMIT of a write; PostgreSQL's max seq when asked (orphans)."""
    room = uuid.UUID(room_id)
    if dead:
        await conn.executemany(DEAD_SQL, [(room, d.seq, d.message_id, d.entry, hashlib.sha1(d.entry).hexdigest(),
                                           d.error) for d in dead])
    last_seq = LAST_SEQ_SQL.format(top=int(top), room=room)
    if not with_floor:
        await conn.execute(last_seq + ";COMMIT")
        return 0
    await conn.execute(last_seq)
    floor = int(await conn.fetchval(FLOOR_SQL, room) or 0)
    await conn.execute("COMMIT")
    return floor


async def _write(pool: asyncpg.Pool, room_id: str, records: list[tuple[Any, ...]], *,
                 raws: list[str] | None = None, dead: list[DeadRow] | None = None, top: int | None = None,
                 skip_fk: bool | None = None) -> Written:
    """Write one batch (rows, and entries already set aside) in one transaction."""
    dead = list(dead or [])
    if top is None:
        top = max([int(r[2]) for r in records] + [d.seq for d in dead] + [0])
    skip = _skip_fk["allowed"] is not False if skip_fk is None else skip_fk
    if not records:
        async with pool.acquire() as conn:
            try:
                await conn.execute("BEGIN")
                await _finish(conn, room_id, top, dead, False)
            except BaseException:
                await _rollback(conn)
                raise
        return Written("", dead=dead)
    careful = False
    if skip:
        async with pool.acquire() as conn:
            try:
                await conn.execute("BEGIN;" + SKIP_FK_SQL + _check_refs_sql(room_id, records))
                await conn.copy_records_to_table("messages", records=records, columns=COLUMNS)
                await _finish(conn, room_id, top, dead, False)
                _skip_fk["allowed"] = True
                return Written("copy", dead=dead)
            except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
                # Rows already there (a re-run after a crash, or a Redis rollback), or a reference is gone.
                await _rollback(conn)
            except DATA_ERRORS:
                await _rollback(conn)
                careful = True
            except asyncpg.InsufficientPrivilegeError:
                await _rollback(conn)
                if skip_fk:
                    raise
                skip = _skip_fk["allowed"] = False
                log.info("flush: the database role may not set session_replication_role; "
                         "per-row foreign-key checks stay on (slower flushes)")
            except BaseException:
                await _rollback(conn)
                raise
    begin = BEGIN_SQL.format(skip_fk=SKIP_FK_SQL if skip else "")
    if not careful:
        async with pool.acquire() as conn:
            try:
                await conn.execute(begin)
                await conn.copy_records_to_table("chat_flush_stage", records=records, columns=COLUMNS)
                orphan_seqs = [r[0] for r in await conn.fetch(INSERT_STAGED_SQL)]
                floor = await _finish(conn, room_id, top, dead, bool(orphan_seqs))
                return Written("stage", _indexes(records, orphan_seqs), dead, floor)
            except DATA_ERRORS:
                await _rollback(conn)
            except BaseException:
                await _rollback(conn)
                raise
    return await _write_careful(pool, room_id, records, raws, dead, top, begin)


async def _write_careful(pool: asyncpg.Pool, room_id: str, records: list[tuple[Any, ...]],
                         raws: list[str] | None, dead: list[DeadRow], top: int, begin: str) -> Written:
    """A batch with rows PostgreSQL refuses: bisect it under savepoints, commit every good row and
    set the bad ones aside, all in one transaction. k bad rows cost O(k log n) chunks, at most
    2n - 1 (every row bad)."""
    orphan_seqs: list[int] = []
    async with pool.acquire() as conn:
        try:
            await conn.execute(begin)
            todo = [(0, len(records))]
            while todo:
                lo, hi = todo.pop()
                await conn.execute("SAVEPOINT chat_flush_chunk")
                try:
                    await conn.copy_records_to_table("chat_flush_stage", records=records[lo:hi], columns=COLUMNS)
                    orphan_seqs += [r[0] for r in await conn.fetch(INSERT_STAGED_SQL)]
                    await conn.execute("RELEASE SAVEPOINT chat_flush_chunk")
                except DATA_ERRORS as exc:
                    await conn.execute("ROLLBACK TO SAVEPOINT chat_flush_chunk;RELEASE SAVEPOINT chat_flush_chunk")
                    if hi - lo == 1:
                        dead.append(_dead_of(records[lo], raws[lo] if raws else None, exc))
                    else:
                        mid = (lo + hi) // 2
                        todo += [(mid, hi), (lo, mid)]  # lower half first: rows keep their order
            floor = await _finish(conn, room_id, top, dead, bool(orphan_seqs))
        except BaseException:
            await _rollback(conn)
            raise
    return Written("careful", _indexes(records, orphan_seqs), dead, floor)


def _indexes(records: list[tuple[Any, ...]], seqs: list[int]) -> list[int]:
    if not seqs:
        return []
    want = set(seqs)
    return [i for i, r in enumerate(records) if int(r[2]) in want]


async def _rollback(conn: Any) -> None:
    try:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - a broken connection is discarded by the pool anyway
        pass


async def _reseq(redis: Redis, keys: Keys, settings: Settings, room_id: str, batch: _Batch,
                 written: Written) -> list[tuple[int, int]]:
    """Move the batch's orphans to new seqs (RESEQ_LUA); [(old seq, new seq), ...]."""
    script_keys = [keys.room_log(room_id), keys.room_seq(room_id), keys.pending_rooms()]
    per: list[Any] = []
    for i in written.orphans:
        r = batch.records[i]
        k = 0
        if r[7] is not None:
            script_keys.append(keys.room_client_id(room_id, r[3] or "-", r[7]))
            k = len(script_keys) - 3
        per += [int(r[2]), str(r[0]), k]
    resync = encode(f"r:{room_id}", {"type": "resync", "room_id": room_id, "reason": "redis_rollback"})
    args = [max(written.floor, batch.top), batch.top + 1, room_id, keys.events_channel(),
            settings.idempotency_ttl_s, resync, len(written.orphans), *per]
    flat = await redis.register_script(RESEQ_LUA)(keys=script_keys, args=args)
    moved = [(int(flat[j]), int(flat[j + 1])) for j in range(0, len(flat), 2)]
    for old, new in moved:
        log.warning("flush room=%s seq=%d: seq already taken in PostgreSQL by another message "
                    "(Redis rolled back); message moved to seq %d", room_id, old, new)
    return moved


async def flush_room(room_id: str, *, redis: Redis, keys: Keys, settings: Settings,
                     pool: asyncpg.Pool, max_run_s: float = MAX_RUN_S) -> FlushResult:
    """Flush one room's cache to PostgreSQL until drained; a no-op if another worker is on it."""
    result = FlushResult(room_id)
    started = time.perf_counter()
    try:
        uuid.UUID(room_id)
    except ValueError:
        # Not a room id at all (nothing the accept path writes): forget it, or it stays forever.
        await redis.srem(keys.pending_rooms(), room_id)
        result.drained = True
        return result
    token = uuid.uuid4().hex
    lease_key = keys.room_flush_lease(room_id)
    lease_ms = settings.flush_lease_s * 1000
    if not await redis.set(lease_key, token, nx=True, px=lease_ms):
        # The holder reads on to the end of the stream, so it also writes what made us run.
        result.busy = True
        return result
    commit = redis.register_script(COMMIT_LUA)
    commit_keys = [keys.room_log(room_id), keys.room_flushed(room_id), keys.room_seq(room_id),
                   keys.pending_rooms(), lease_key, keys.room_members(room_id)]
    read_ahead: asyncio.Task[_Batch] | None = None
    try:
        # Re-arm the backlog trigger: what arrives from now on may ask for another run.
        await redis.delete(keys.room_flush_queued(room_id))
        flushed = int(await redis.get(keys.room_flushed(room_id)) or 0)
        size = settings.flush_batch_size
        raw = _raw_reader(redis)
        while True:
            batch = await (read_ahead or _read(raw, keys, room_id, flushed, size))
            read_ahead = None
            if batch.entries == size:
                # Probably more: read and parse the next batch while this one is written.
                # Safe: entries after batch.top are trimmed only once some flush committed them.
                read_ahead = asyncio.create_task(_read(raw, keys, room_id, batch.top, size))
            if batch.records or batch.dead:
                written = await _write(pool, room_id, batch.records, raws=batch.raws, dead=batch.dead,
                                       top=batch.top)
                for d in written.dead:
                    log.error("flush room=%s seq=%d: entry set aside in dead_letters (%s)", room_id, d.seq, d.error)
                result.skipped += len(written.dead)
                result.rows += (len(batch.records) - (len(written.dead) - len(batch.dead))
                                - len(written.orphans))
                if written.orphans:
                    # After the commit (the good rows are safe), before `flushed` passes them.
                    result.reseq += len(await _reseq(redis, keys, settings, room_id, batch, written))
            result.batches += 1 if batch.entries else 0
            flushed, drained, held = await commit(
                keys=commit_keys, args=[batch.top, settings.cache_tail, room_id, token, lease_ms,
                                        settings.room_cache_idle_ttl_s])
            result.flushed, result.drained = int(flushed), bool(drained)
            # A short batch means we reached the end of the stream as it was when read. What
            # arrived since is pending and gets its own run (backlog trigger or next tick):
            # chasing a live room's tail with tiny batches would pin this worker thread.
            if (batch.entries < size or drained or not held
                    or time.perf_counter() - started > max_run_s):
                break
    finally:
        if read_ahead is not None:
            read_ahead.cancel()
            await asyncio.gather(read_ahead, return_exceptions=True)
        await redis.register_script(RELEASE_LUA)(keys=[lease_key], args=[token])
        # Re-arm again: messages that arrived after our last read may need a new run.
        await redis.delete(keys.room_flush_queued(room_id))
    result.ms = (time.perf_counter() - started) * 1000
    if result.rows or result.skipped:
        rate = result.rows / (result.ms / 1000) if result.ms else 0.0
        log.info("flush room=%s rows=%d batches=%d ms=%.1f rows_per_s=%.0f flushed=%d dead=%d reseq=%d",
                 room_id, result.rows, result.batches, result.ms, rate, result.flushed, result.skipped,
                 result.reseq)
    return result


# Rooms per SQL page and Redis pipeline when re-seeding after a Redis restart.
RESEED_PAGE = 1000
RESEED_SQL = """SELECT r.id, GREATEST(r.last_seq, COALESCE((SELECT MAX(seq) FROM messages m WHERE m.room_id = r.id), 0)) AS top
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


async def flush_all_pending(*, redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool,
                            concurrency: int = 4, wait_s: float | None = None) -> list[FlushResult]:
    """Flush every room pending now up to its newest message now, in this process.

    Rooms a worker holds are retried until it lets go (or `wait_s`, default three leases).
    """
    deadline = time.monotonic() + (wait_s if wait_s is not None else 3 * settings.flush_lease_s)
    gate = asyncio.Semaphore(concurrency)

    async def one(room_id: str) -> FlushResult:
        target = int(await redis.get(keys.room_seq(room_id)) or 0)
        total = FlushResult(room_id)
        while True:
            async with gate:
                res = await flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pool)
            total.rows += res.rows
            total.batches += res.batches
            total.skipped += res.skipped
            total.reseq += res.reseq
            total.ms += res.ms
            total.flushed, total.busy = res.flushed, res.busy
            total.drained = res.drained or (not res.busy and res.flushed >= target)
            if total.drained or time.monotonic() > deadline:
                return total
            if res.busy:
                await asyncio.sleep(0.2)

    todo = sorted(await redis.smembers(keys.pending_rooms()))
    return list(await asyncio.gather(*(one(r) for r in todo)))
