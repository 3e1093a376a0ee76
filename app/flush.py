"""Write-behind flush: move a room's cached messages from its Redis stream into PostgreSQL.

Detach, write, then trim. One run per room at a time (a short lease, renewed each batch).
Each batch reads up to FLUSH_BATCH_SIZE entries after `flushed` and writes them in one
transaction: straight COPY into `messages` when that is safe, else COPY into a staging
table and INSERT ... SELECT ... ON CONFLICT (room_id, seq) DO NOTHING. Only after the
commit does one Lua script advance `flushed`, trim the stream below it (keeping the newest
CACHE_TAIL entries for reads) and drop the room from the pending set once nothing is left.

A crash anywhere leaves `flushed` at or below what PostgreSQL holds: the next run re-reads
at most one batch and the unique (room_id, seq) turns the rewrite into a no-op. Losing
the lease (a stalled batch outlived it) is harmless for the same reason."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis

from app.keys import Keys
from app.serialize import loads
from app.settings import Settings

log = logging.getLogger("chat.flush")

# A run stops after this long even if the room keeps receiving messages; the room stays
# pending, so the next tick (or backlog trigger) continues. Keeps one hot room from
# pinning a worker thread forever.
MAX_RUN_S = 60.0

# KEYS: log, flushed, seq, pending, lease. ARGV: batch_max, cache_tail, room_id, token, lease_ms.
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
local drained = 0
if flushed >= last then
  redis.call('SREM', KEYS[4], ARGV[3])
  drained = 1
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

COLUMNS = ("id", "room_id", "seq", "sender_id", "kind", "body", "file_id", "client_id", "created_at")

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
# check share one round trip: 4 per batch, as on the staging path.
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
# locks; one that comes later waits for our commit and then cascades as usual. Sent with
# COMMIT in one round trip.
INSERT_COMMIT_SQL = """WITH
  r AS (SELECT id FROM rooms WHERE id IN (SELECT room_id FROM chat_flush_stage) FOR KEY SHARE),
  u AS (SELECT id FROM users WHERE id IN (SELECT sender_id FROM chat_flush_stage) FOR KEY SHARE),
  f AS (SELECT id FROM files WHERE id IN (SELECT file_id FROM chat_flush_stage) FOR KEY SHARE)
INSERT INTO messages (id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at)
SELECT s.id, s.room_id, s.seq, u.id, s.kind, s.body, f.id, s.client_id, s.created_at
FROM chat_flush_stage s
JOIN r ON r.id = s.room_id
LEFT JOIN u ON u.id = s.sender_id
LEFT JOIN f ON f.id = s.file_id
ON CONFLICT (room_id, seq) DO NOTHING;
COMMIT"""

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
    skipped: int = 0  # unreadable cache entries (logged; a bug in the writer)


@dataclass
class _Batch:
    entries: int  # stream entries read
    records: list[tuple[Any, ...]]  # rows for COPY
    top: int  # highest seq read (the `after` we read from when nothing was there)
    skipped: int


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


async def _read(raw: Redis, keys: Keys, room_id: str, after: int, count: int) -> _Batch:
    """The next `count` cache entries after seq `after`, parsed into rows (`raw`: _raw_reader)."""
    entries = await raw.xrange(keys.room_log(room_id), min=str(after + 1), max="+", count=count)
    records: list[tuple[Any, ...]] = []
    top = after
    skipped = 0
    for entry_id, fields in entries:
        seq = int(entry_id.partition("-")[0])
        top = seq
        try:
            m = loads(_message_json(fields))
            f = m.get("file")
            records.append((m["id"], room_id, seq, m.get("sender_id"), m["kind"], m.get("body") or "",
                            f["id"] if f else None, m.get("client_id"),
                            datetime.fromisoformat(m["created_at"])))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            # Skipping loses this one message; refusing would block every later message
            # of the room and grow Redis without bound.
            skipped += 1
            log.error("flush room=%s seq=%d: unreadable cache entry skipped (%r)", room_id, seq, exc)
    return _Batch(len(entries), records, top, skipped)


def _check_refs_sql(room_id: str, records: list[tuple[Any, ...]]) -> str:
    more = ""
    for table, col in (("users", 3), ("files", 6)):
        ids = {str(uuid.UUID(r[col])) for r in records if r[col] is not None}
        if ids:
            more += CHECK_MORE_SQL.format(table=table, ids=",".join(f"'{i}'" for i in sorted(ids)),
                                          count=len(ids))
    return CHECK_REFS_SQL.format(room=uuid.UUID(room_id), more=more)


async def _write(pool: asyncpg.Pool, room_id: str, records: list[tuple[Any, ...]], *,
                 skip_fk: bool | None = None) -> str:
    """Write one batch in one transaction; returns the path taken ("copy" or "stage")."""
    skip = _skip_fk["allowed"] is not False if skip_fk is None else skip_fk
    if skip:
        async with pool.acquire() as conn:
            try:
                await conn.execute("BEGIN;" + SKIP_FK_SQL + _check_refs_sql(room_id, records))
                await conn.copy_records_to_table("messages", records=records, columns=COLUMNS)
                await conn.execute("COMMIT")
                _skip_fk["allowed"] = True
                return "copy"
            except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
                # Rows already there (a re-run after a crash), or a reference is gone.
                await _rollback(conn)
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
    async with pool.acquire() as conn:
        try:
            await conn.execute(BEGIN_SQL.format(skip_fk=SKIP_FK_SQL if skip else ""))
            await conn.copy_records_to_table("chat_flush_stage", records=records, columns=COLUMNS)
            await conn.execute(INSERT_COMMIT_SQL)
            return "stage"
        except BaseException:
            await _rollback(conn)
            raise


async def _rollback(conn: Any) -> None:
    try:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - a broken connection is discarded by the pool anyway
        pass


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
                   keys.pending_rooms(), lease_key]
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
            if batch.records:
                await _write(pool, room_id, batch.records)
            result.rows += len(batch.records)
            result.skipped += batch.skipped
            result.batches += 1 if batch.entries else 0
            flushed, drained, held = await commit(
                keys=commit_keys, args=[batch.top, settings.cache_tail, room_id, token, lease_ms])
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
        log.info("flush room=%s rows=%d batches=%d ms=%.1f rows_per_s=%.0f flushed=%d",
                 room_id, result.rows, result.batches, result.ms, rate, result.flushed)
    return result


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
            total.ms += res.ms
            total.flushed, total.busy = res.flushed, res.busy
            total.drained = res.drained or (not res.busy and res.flushed >= target)
            if total.drained or time.monotonic() > deadline:
                return total
            if res.busy:
                await asyncio.sleep(0.2)

    todo = sorted(await redis.smembers(keys.pending_rooms()))
    return list(await asyncio.gather(*(one(r) for r in todo)))
