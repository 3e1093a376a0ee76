"""The flush's second half: changes to existing messages and read markers, Redis -> PostgreSQL.

Called by flush_room (app/flush/__init__.py) after the message batches, under the same lease.
Same rule as the messages: detach, write, then trim. Nothing leaves Redis before PostgreSQL
committed it, and each Redis step after a commit is conditional, so a crash at any point only
means a re-run rewrites the same values, which the guards make no-ops.

Changes (edits, tombstones, reactions; the `changed` zset: seq -> version of its latest
unflushed change, the `state` hash: seq -> that latest stored-form JSON). Taken oldest version
first, FLUSH_BATCH_SIZE at a time, only seqs whose row PostgreSQL holds (below the stream's
first entry, or up to `flushed`). One transaction per batch: lock the rows that become
tombstones and note their file ids, `UPDATE messages ... WHERE m.version < s.version` (a re-run,
or an old overlay, never overwrites a newer row), give the tombstones' files an expiry of now
(GET /files/{id} answers 410 from the commit on), raise rooms.last_version (the counter's seed
if Redis loses it). After the commit the files' bytes go and their rows are marked expired
(expire_files_now, what the expiry sweep app/files.sweep_expired does; a crash in between
leaves them to that sweep, which finds them by their expiry), then lua/changes_commit.lua drops each seq from `changed` only
if its score is still the version written: a change that arrived meanwhile stays for the
next run. A change PostgreSQL refuses for its data (SQLSTATE class 22), or whose JSON does
not parse, goes to `dead_letters` in the same transaction and leaves `changed` like the
others: one bad change never blocks its room.

Read markers (`reads` hash: user -> last_read_seq, `rdirty` set: users PostgreSQL lags for).
Up to FLUSH_BATCH_SIZE users per statement: `last_read_seq = GREATEST(...)` (forward only),
then lua/reads_commit.lua clears a user's dirty bit only if the marker did not move meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis

from app.flush.write import DATA_ERRORS, DEAD_SQL, DeadRow, _error_text, _id_or_none, _rollback
from app.serialize import dumps, loads
from app.settings import Settings
from app.store import scripts
from app.store.keys import Keys
from app.upload import names

log = logging.getLogger("chat.flush")

BIGINT_MAX = 2**63 - 1

# The rows that become tombstones in this batch, locked before the UPDATE so the file ids read
# are the ones the UPDATE clears (nothing else writes them meanwhile).
OLD_FILES_SQL = """SELECT m.seq, m.file_id FROM messages m
JOIN unnest($2::bigint[], $3::bigint[]) AS s(seq, version) ON m.seq = s.seq
WHERE m.room_id = $1 AND m.version < s.version AND NOT m.deleted AND m.file_id IS NOT NULL
FOR UPDATE OF m"""

# file_id only ever changes to NULL (a tombstone): an edit keeps the row's own, so a file
# row the retention prune deleted (ON DELETE SET NULL) is never referenced again. mentions
# travel as JSON text per row: unnest cannot take an array of arrays of different lengths.
UPDATE_SQL = """UPDATE messages m SET
  body = s.body, edited_at = s.edited_at, deleted = s.deleted, version = s.version,
  file_id = CASE WHEN s.deleted THEN NULL ELSE m.file_id END,
  reactions = s.reactions::jsonb,
  mentions = CASE WHEN s.mentions IS NULL THEN NULL
                  ELSE ARRAY(SELECT jsonb_array_elements_text(s.mentions::jsonb)) END,
  reply_to = s.reply_to
FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[], $6::boolean[], $7::text[],
            $8::text[], $9::bigint[])
  AS s(seq, version, body, edited_at, deleted, reactions, mentions, reply_to)
WHERE m.room_id = $1 AND m.seq = s.seq AND m.version < s.version
RETURNING m.seq"""

# Servable no more from the commit on (app/files.servable: expires_at passed -> 410), and
# found by the expiry sweep should the byte removal after the commit not happen.
EXPIRE_FILES_SQL = """UPDATE files SET expires_at = now()
WHERE id = ANY($1::uuid[]) AND status = 'ready' AND (expires_at IS NULL OR expires_at > now())
RETURNING id, storage_path, thumbnail_path"""

LAST_VERSION_SQL = "UPDATE rooms SET last_version = $2 WHERE id = $1 AND last_version < $2"

# What the expiry sweep writes for a file past its expiry; only rows still 'ready' (a re-run,
# or the sweep having got there first, changes nothing).
EXPIRED_SQL = "UPDATE files SET status = 'expired', expired = true WHERE id = ANY($1::uuid[]) AND status = 'ready'"

MARKERS_SQL = """UPDATE memberships m SET last_read_seq = s.v
FROM unnest($2::uuid[], $3::bigint[]) AS s(u, v)
WHERE m.room_id = $1 AND m.user_id = s.u AND m.last_read_seq < s.v"""


@dataclass
class ChangesResult:
    changes: int = 0  # changes written to PostgreSQL (or found there already, after a crash)
    skipped: int = 0  # changes set aside in dead_letters
    files: int = 0  # files of new tombstones whose bytes were removed
    markers: int = 0  # read markers written
    complete: bool = True  # False: stopped by the run's deadline or a lost lease, work left


@dataclass
class _Row:
    seq: int
    version: int
    body: str
    edited_at: datetime | None
    deleted: bool
    reactions: str | None  # JSON text of the stored-form list
    mentions: str | None  # JSON text of the list of names
    reply_to: int | None
    raw: str


async def rows_in_postgres(redis: Redis, keys: Keys, room_id: str) -> int:
    """The highest seq whose message PostgreSQL holds (or set aside): `flushed`, or everything
    below the stream's first entry (the read merge's invariant), or, with no stream entry at all
    (trimmed empty, or an idle room's keys expired), the whole counter."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(keys.room_flushed(room_id))
        pipe.xrange(keys.room_log(room_id), "-", "+", count=1)
        pipe.get(keys.room_seq(room_id))
        flushed, head, last = await pipe.execute()
    bound = int(flushed or 0)
    if head:
        return max(bound, int(head[0][0].partition("-")[0]) - 1)
    return max(bound, int(last or 0))


def _row(seq: int, score: int, raw: str) -> _Row:
    """A stored-form message (the overlay's JSON) as the UPDATE's values; raises on garbage."""
    m = loads(raw)
    if not isinstance(m, dict):
        raise TypeError("the change is not a JSON object")
    version = max(int(m.get("version") or 0), score)
    if not 0 < version <= BIGINT_MAX:
        raise ValueError(f"version {version} out of range")
    deleted = m.get("deleted") is True
    body = "" if deleted else m.get("body") or ""
    if not isinstance(body, str):
        raise TypeError("body is not text")
    edited = m.get("edited_at")
    edited_at = datetime.fromisoformat(edited) if edited else None
    reactions = mentions = None
    reply_to = None
    if not deleted:
        rs = m.get("reactions")
        if isinstance(rs, list) and rs:
            # The stored form only: `me` is per viewer and never stored.
            reactions = dumps([{"emoji": str(r["emoji"]), "count": int(r["count"]),
                                "user_ids": [str(u) for u in r["user_ids"]]} for r in rs])
        ms = m.get("mentions")
        if isinstance(ms, list) and ms:
            mentions = dumps([str(n) for n in ms])
        rt = m.get("reply_to")
        if isinstance(rt, dict) and rt.get("seq") is not None:
            reply_to = int(rt["seq"])
    return _Row(seq, version, body, edited_at, deleted, reactions, mentions, reply_to, raw)


def _dead(seq: int, raw: str, exc: BaseException, message_id: Any = None) -> DeadRow:
    entry = raw.encode("utf-8", "surrogatepass")
    return DeadRow(seq, _id_or_none(message_id), entry, "change: " + _error_text(exc))


def _message_id(raw: str) -> Any:
    try:
        m = loads(raw)
        return m.get("id") if isinstance(m, dict) else None
    except ValueError:
        return None


async def flush_changes(room_id: str, *, redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool,
                        deadline: float) -> ChangesResult:
    """Write the room's pending changes to PostgreSQL, batch by batch, oldest version first
    (`deadline`: time.perf_counter() value after which no new batch starts)."""
    result = ChangesResult()
    room = uuid.UUID(room_id)
    size = settings.flush_batch_size
    changed_key, state_key, log_key = keys.room_changed(room_id), keys.room_state(room_id), keys.room_log(room_id)
    bound: int | None = None  # read once there is something to write (most runs have nothing)
    after: float | None = None  # score cursor: versions are unique per room, so it is exact
    while True:
        if time.perf_counter() > deadline:
            result.complete = False
            return result
        entries = await redis.zrange(changed_key, f"({after}" if after is not None else "-inf", "+inf",
                                     byscore=True, offset=0, num=size, withscores=True)
        if not entries:
            return result
        after = entries[-1][1]
        if bound is None:
            bound = await rows_in_postgres(redis, keys, room_id)
        todo: list[tuple[str, int, int]] = []  # (member, seq, score)
        drop: list[tuple[str, int]] = []  # members that can never be written: only forgotten
        for member, score in entries:
            try:
                seq = int(member)
            except ValueError:
                seq = 0
            if seq < 1:
                log.error("flush room=%s: changed member %r is not a seq; dropped", room_id, member)
                drop.append((member, int(score)))
            elif seq <= bound:
                todo.append((member, seq, int(score)))
            # else: its message is not in PostgreSQL yet; a later run writes the change after it
        if todo or drop:
            await _batch(room_id, room, redis, keys, settings, pool, todo, drop, result,
                         changed_key, state_key, log_key)
        if len(entries) < size:
            return result


async def _batch(room_id: str, room: uuid.UUID, redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool,
                 todo: list[tuple[str, int, int]], drop: list[tuple[str, int]], result: ChangesResult,
                 changed_key: str, state_key: str, log_key: str) -> None:
    raws = await redis.hmget(state_key, [m for m, _, _ in todo]) if todo else []
    rows: list[_Row] = []
    dead: list[DeadRow] = []
    done: list[tuple[str, int]] = list(drop)  # (member, version) for the commit script
    for (member, seq, score), raw in zip(todo, raws):
        if raw is None:
            # The overlay lost its entry (nothing the change script does): nothing to write.
            log.error("flush room=%s seq=%d: change v%d has no state entry; dropped", room_id, seq, score)
            done.append((member, score))
            continue
        try:
            row = _row(seq, score, raw)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            dead.append(_dead(seq, raw, exc, _message_id(raw)))
            done.append((member, score))
            continue
        rows.append(row)
        done.append((member, row.version))
    top = max([v for _, v in done] + [0])
    files: list[dict[str, Any]] = []
    if rows or dead:
        files, written, dead = await _write(pool, room, rows, dead, top)
        result.changes += written
    result.skipped += len(dead)
    for d in dead:
        log.error("flush room=%s seq=%d: change set aside in dead_letters (%s)", room_id, d.seq, d.error)
    if files:
        result.files += await expire_files_now(settings=settings, pool=pool, rows=files)
    await scripts.CHANGES_COMMIT(redis, [changed_key, state_key, log_key],
                                 [x for member, version in done for x in (member, version)])


async def _write(pool: asyncpg.Pool, room: uuid.UUID, rows: list[_Row], dead: list[DeadRow],
                 top: int) -> tuple[list[dict[str, Any]], int, list[DeadRow]]:
    """One transaction: rows (bisected under savepoints after a data error), dead letters,
    the tombstones' files expired, last_version. Returns (file rows, rows written, dead)."""
    careful = False
    while True:
        bad: list[DeadRow] = []
        async with pool.acquire() as conn:
            try:
                await conn.execute("BEGIN")
                gone = [r for r in rows if r.deleted]
                old: dict[int, Any] = {}
                if gone:
                    old = {r["seq"]: r["file_id"] for r in await conn.fetch(
                        OLD_FILES_SQL, room, [r.seq for r in gone], [r.version for r in gone])}
                if careful:
                    updated = await _update_careful(conn, room, rows, bad)
                else:
                    updated = await _update(conn, room, rows)
                all_dead = dead + bad
                if all_dead:
                    await conn.executemany(DEAD_SQL, [
                        (room, d.seq, d.message_id, d.entry, hashlib.sha1(d.entry).hexdigest(), d.error)
                        for d in all_dead])
                file_ids = [old[s] for s in updated if s in old]
                files = [dict(r) for r in await conn.fetch(EXPIRE_FILES_SQL, file_ids)] if file_ids else []
                await conn.execute(LAST_VERSION_SQL, room, top)
                await conn.execute("COMMIT")
                # Rows already at (or past) their version after a crash count as written too.
                return files, len(rows) - len(bad), all_dead
            except DATA_ERRORS:
                await _rollback(conn)
                if careful:
                    raise
                careful = True
            except BaseException:
                await _rollback(conn)
                raise


def _args(rows: list[_Row]) -> list[Any]:
    return [[r.seq for r in rows], [r.version for r in rows], [r.body for r in rows], [r.edited_at for r in rows],
            [r.deleted for r in rows], [r.reactions for r in rows], [r.mentions for r in rows],
            [r.reply_to for r in rows]]


async def _update(conn: Any, room: uuid.UUID, rows: list[_Row]) -> list[int]:
    if not rows:
        return []
    return [r["seq"] for r in await conn.fetch(UPDATE_SQL, room, *_args(rows))]


async def _update_careful(conn: Any, room: uuid.UUID, rows: list[_Row], bad: list[DeadRow]) -> list[int]:
    """Bisect under savepoints: every good row written, each bad one into `bad` (as write.py does)."""
    updated: list[int] = []
    todo = [(0, len(rows))]
    while todo:
        lo, hi = todo.pop()
        await conn.execute("SAVEPOINT chat_flush_change")
        try:
            updated += await _update(conn, room, rows[lo:hi])
            await conn.execute("RELEASE SAVEPOINT chat_flush_change")
        except DATA_ERRORS as exc:
            await conn.execute("ROLLBACK TO SAVEPOINT chat_flush_change;RELEASE SAVEPOINT chat_flush_change")
            if hi - lo == 1:
                r = rows[lo]
                bad.append(_dead(r.seq, r.raw, exc, _message_id(r.raw)))
            else:
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]
    return updated


async def flush_markers(room_id: str, *, redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool,
                        deadline: float) -> ChangesResult:
    """Write the room's moved read markers (`rdirty`) to memberships.last_read_seq."""
    result = ChangesResult()
    room = uuid.UUID(room_id)
    size = settings.flush_batch_size
    reads_key, dirty_key = keys.room_reads(room_id), keys.room_reads_dirty(room_id)
    while True:
        if time.perf_counter() > deadline:
            result.complete = False
            return result
        # Up to `size` distinct users and their markers, one round trip.
        found = await scripts.MARKERS_READ(redis, [reads_key, dirty_key], [size])
        if not found:
            return result
        users, values = found
        ids: list[uuid.UUID] = []
        marks: list[int] = []
        done: list[str] = []
        for user, value in zip(users, values):
            done += [user, value if value is not None else ""]
            try:
                uid, mark = uuid.UUID(user), int(value)
            except (TypeError, ValueError):
                # Nothing PostgreSQL could hold (no marker, or not a user id): only forgotten.
                if value is not None:
                    log.error("flush room=%s: read marker %r of %r is not writable; dropped", room_id, value, user)
                continue
            if 0 <= mark <= BIGINT_MAX:
                ids.append(uid)
                marks.append(mark)
        if ids:
            await pool.execute(MARKERS_SQL, room, ids, marks)
            result.markers += len(ids)
        removed = int(await scripts.READS_COMMIT(redis, [reads_key, dirty_key], done))
        # Every marker moved again meanwhile (a very busy room): leave the rest to the next run.
        if len(users) < size or removed == 0:
            if removed == 0 and await redis.scard(dirty_key):
                result.complete = False
            return result


async def expire_files_now(*, settings: Settings, pool: asyncpg.Pool, rows: list[dict[str, Any]]) -> int:
    """Delete these files' bytes and mark their rows expired, as app/files.sweep_expired does at
    `expires_at` (the same removals: upload, stored file, thumbnail); returns how many rows.

    `rows`: dicts with id, storage_path, thumbnail_path. Their `expires_at` is already now (set
    in the tombstones' transaction), so they are not served meanwhile, and the sweep finishes
    the job should this call never happen (a crash). Here rather than in app/retention.py:
    the files service it imports sits above the flush (it imports app.resources)."""
    def remove() -> None:
        for r in rows:
            names.remove(settings.media_root, names.incoming_rel(str(r["id"])), r["storage_path"],
                         r["thumbnail_path"])

    await asyncio.to_thread(remove)
    status = await pool.execute(EXPIRED_SQL, [uuid.UUID(str(r["id"])) for r in rows])
    done = int(status.split()[-1])
    if done:
        log.info("expired %d file(s) of deleted messages", done)
    return done
