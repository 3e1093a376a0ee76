"""Write-behind flush: move a room's cached messages from its Redis stream into PostgreSQL.

Detach, write, then trim. One run per room at a time (a short lease, renewed each batch).
Each batch reads up to FLUSH_BATCH_SIZE entries after `flushed`, COPYs them into a
per-session staging table and moves them with one INSERT ... SELECT ... ON CONFLICT
(room_id, seq) DO NOTHING, commits, and only then one Lua script advances `flushed`,
trims the stream below it (keeping the newest CACHE_TAIL entries for reads) and drops the
room from the pending set once nothing is left.

A crash anywhere leaves `flushed` at or below what PostgreSQL holds: the next run re-reads
at most one batch and the unique (room_id, seq) turns the rewrite into a no-op. Losing
the lease (a stalled batch outlived it) is harmless for the same reason.
"""

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
BEGIN_SQL = """BEGIN;
CREATE TEMP TABLE IF NOT EXISTS chat_flush_stage (
  id uuid, room_id uuid, seq bigint, sender_id uuid, kind text, body text,
  file_id uuid, client_id text, created_at timestamptz
) ON COMMIT DELETE ROWS"""

# Joins keep a batch valid when its room, sender or file was deleted meanwhile: rows of a
# deleted room are dropped, a deleted sender or file becomes NULL (as ON DELETE SET NULL
# would have done). Sent with COMMIT in one round trip.
INSERT_COMMIT_SQL = """INSERT INTO messages (id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at)
SELECT s.id, s.room_id, s.seq, u.id, s.kind, s.body, f.id, s.client_id, s.created_at
FROM chat_flush_stage s
JOIN rooms r ON r.id = s.room_id
LEFT JOIN users u ON u.id = s.sender_id
LEFT JOIN files f ON f.id = s.file_id
ON CONFLICT (room_id, seq) DO NOTHING;
COMMIT"""


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


def _rows(room_id: str, entries: list[Any]) -> tuple[list[tuple[Any, ...]], int, int]:
    """Records for COPY from stream entries; returns (records, highest seq, skipped)."""
    records: list[tuple[Any, ...]] = []
    top = 0
    skipped = 0
    for entry_id, fields in entries:
        seq = int(entry_id.partition("-")[0])
        top = seq
        try:
            m = loads(fields["m"])
            f = m.get("file")
            records.append((m["id"], room_id, seq, m.get("sender_id"), m["kind"], m.get("body") or "",
                            f["id"] if f else None, m.get("client_id"),
                            datetime.fromisoformat(m["created_at"])))
        except (KeyError, TypeError, ValueError) as exc:
            # Skipping loses this one message; refusing would block every later message
            # of the room and grow Redis without bound.
            skipped += 1
            log.error("flush room=%s seq=%d: unreadable cache entry skipped (%r)", room_id, seq, exc)
    return records, top, skipped


async def _write(pool: asyncpg.Pool, records: list[tuple[Any, ...]]) -> None:
    """One transaction: stage with COPY, then insert what is new (4 round trips per batch)."""
    for attempt in (1, 2):
        async with pool.acquire() as conn:
            try:
                await conn.execute(BEGIN_SQL)
                await conn.copy_records_to_table("chat_flush_stage", records=records, columns=COLUMNS)
                await conn.execute(INSERT_COMMIT_SQL)
                return
            except asyncpg.ForeignKeyViolationError:
                # The room, sender or file was deleted between our join and the key check:
                # the second attempt's joins no longer see it.
                await _rollback(conn)
                if attempt == 2:
                    raise
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
        # The holder loops until the room is drained, so it also writes what made us run.
        result.busy = True
        return result
    commit = redis.register_script(COMMIT_LUA)
    commit_keys = [keys.room_log(room_id), keys.room_flushed(room_id), keys.room_seq(room_id),
                   keys.pending_rooms(), lease_key]
    try:
        # Re-arm the backlog trigger: what arrives from now on may ask for another run.
        await redis.delete(keys.room_flush_queued(room_id))
        flushed = int(await redis.get(keys.room_flushed(room_id)) or 0)
        while True:
            entries = await redis.xrange(keys.room_log(room_id), min=str(flushed + 1), max="+",
                                         count=settings.flush_batch_size)
            top = flushed
            if entries:
                records, top, skipped = _rows(room_id, entries)
                result.skipped += skipped
                if records:
                    await _write(pool, records)
                result.rows += len(records)
                result.batches += 1
            flushed, drained, held = await commit(
                keys=commit_keys, args=[top, settings.cache_tail, room_id, token, lease_ms])
            result.flushed, result.drained = int(flushed), bool(drained)
            if (not entries or drained or not held
                    or time.perf_counter() - started > max_run_s):
                break
    finally:
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
    """Flush every room pending now, in this process; wait (up to wait_s) for rooms a worker holds."""
    deadline = time.monotonic() + (wait_s if wait_s is not None else 3 * settings.flush_lease_s)
    gate = asyncio.Semaphore(concurrency)

    async def one(room_id: str) -> FlushResult:
        total = FlushResult(room_id)
        while True:
            async with gate:
                res = await flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pool)
            total.rows += res.rows
            total.batches += res.batches
            total.skipped += res.skipped
            total.ms += res.ms
            total.flushed, total.drained, total.busy = res.flushed, res.drained, res.busy
            # busy: a worker holds the room; not drained: the run used up its time budget
            if (res.drained and not res.busy) or time.monotonic() > deadline:
                return total
            if res.busy:
                await asyncio.sleep(0.2)

    todo = sorted(await redis.smembers(keys.pending_rooms()))
    return list(await asyncio.gather(*(one(r) for r in todo)))
