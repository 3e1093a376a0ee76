"""The flush's PostgreSQL side: one batch of cached messages in one transaction.

Direct COPY into `messages` when that is safe (the common case), else COPY into a staging
table and one INSERT ... SELECT ... ON CONFLICT DO NOTHING that also returns the orphans
(rows whose seq PostgreSQL holds under another message id: Redis re-issued it). Rows that
PostgreSQL refuses for their data are found by bisecting the batch under savepoints and set
aside in `dead_letters` in the same transaction. Every write raises rooms.last_seq to the
batch's top. app/flush/__init__.py drives it; app/flush/reseq.py moves the orphans."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator

import asyncpg
import orjson

log = logging.getLogger("chat.flush")

# reply_to (the original's seq) and mentions (text[]) ride along in the same COPY; the other
# lifecycle columns keep their database defaults until app/flush/changes.py writes a change.
COLUMNS = ("id", "room_id", "seq", "sender_id", "kind", "body", "file_id", "client_id", "created_at",
           "reply_to", "mentions")
# Records without the last two (callers from before issue 12, tests): COPY leaves them NULL.
BASE_COLUMNS = COLUMNS[:9]

# What PostgreSQL or asyncpg's encoder raise for a row's data: SQLSTATE class 22 (NUL in text,
# too long, out of range) server side; ValueError (bad UUID, lone surrogate), TypeError and
# OverflowError client side. Unique and foreign-key violations (class 23) are not here.
DATA_ERRORS = (asyncpg.DataError, ValueError, TypeError, OverflowError)

# Temp tables are per session, and asyncpg's pool keeps sessions: created once per
# connection, emptied by every commit. Sent with BEGIN in one round trip.
BEGIN_SQL = """BEGIN;{skip_fk}
CREATE TEMP TABLE IF NOT EXISTS chat_flush_stage (
  id uuid, room_id uuid, seq bigint, sender_id uuid, kind text, body text,
  file_id uuid, client_id text, created_at timestamptz, reply_to bigint, mentions text[]
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
# stored at another seq (a message moved by lua/reseq.lua, seen again after a second rollback)
# are both skipped here and judged below. The stage is emptied in the same statement (the
# careful path reuses it per chunk). Returns the orphans: rows not inserted whose id
# PostgreSQL does not hold (the sub-select sees the table as before this INSERT).
INSERT_STAGED_SQL = """WITH
  r AS (SELECT id FROM rooms WHERE id IN (SELECT room_id FROM chat_flush_stage) FOR KEY SHARE),
  u AS (SELECT id FROM users WHERE id IN (SELECT sender_id FROM chat_flush_stage) FOR KEY SHARE),
  f AS (SELECT id FROM files WHERE id IN (SELECT file_id FROM chat_flush_stage) FOR KEY SHARE),
  ins AS (
    INSERT INTO messages (id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at,
                          reply_to, mentions)
    SELECT s.id, s.room_id, s.seq, u.id, s.kind, s.body, f.id, s.client_id, s.created_at,
           s.reply_to, s.mentions
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



@dataclass
class FkSkip:
    """Whether this process's database role may skip the triggers (None until tried).

    Owned by the process's Resources (app/resources.py), so a worker learns it once; a
    caller without one (a test, the CLI) learns it per flush run."""

    allowed: bool | None = None


@dataclass
class DeadRow:
    """A cache entry set aside: what goes into `dead_letters`."""

    seq: int
    message_id: str | None
    entry: bytes
    error: str


@dataclass
class Written:
    """What one batch's transaction did."""

    path: str  # "copy", "stage" or "careful" (bisected after a data error); "" = no rows
    orphans: list[int] = field(default_factory=list)  # indexes into the records
    dead: list[DeadRow] = field(default_factory=list)  # every row set aside (read or write)
    floor: int = 0  # PostgreSQL's highest seq of the room (set when there are orphans)


def _id_or_none(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except (TypeError, ValueError, AttributeError):
        return None


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"[:2000]
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


_gc_lock = threading.Lock()
_gc_holders = 0  # reads that paused the collector and have not finished


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off while a batch is read and turned into rows.

    A batch is some 30,000 new container objects (the XRANGE reply's lists and strings,
    then a dict, tuple and datetime per row) that all live until the batch is written:
    the collector would run every 700 of them and walk what already survived, and that was
    60% of parsing the reply (measured: 1.2 -> 0.5 us per entry). The garbage of a read is
    freed by reference counting; the collector runs again when the last overlapping read
    (read-ahead, concurrent rooms, other threads) ends. Left alone if someone else turned it off.
    """
    global _gc_holders
    with _gc_lock:
        if _gc_holders == 0 and not gc.isenabled():
            owner = False
        else:
            owner = True
            _gc_holders += 1
            gc.disable()
    try:
        yield
    finally:
        if owner:
            with _gc_lock:
                _gc_holders -= 1
                if _gc_holders == 0:
                    gc.enable()


def message_json(fields: list[Any]) -> Any:
    """The "m" field of a raw stream entry (the only field the accept path writes)."""
    if fields[0] == "m":
        return fields[1]
    return dict(zip(fields[::2], fields[1::2]))["m"]


def entry_bytes(fields: list[Any]) -> bytes:
    """The entry as stored for a dead letter: the "m" field, or every field when it has none."""
    def b(v: Any) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass")
    if len(fields) == 2 and b(fields[0]) == b"m":
        return b(fields[1])
    return b"\n".join(b(k) + b"=" + b(v) for k, v in zip(fields[::2], fields[1::2]))


def rows_of(room_id: str, entries: list[Any]) -> tuple[list[tuple[Any, ...]], list[str], list[DeadRow]]:
    """COPY records of raw XRANGE entries ([entry_id, [field, value, ...]], ...), their "m"
    JSON as read (for a dead letter), and the entries that did not parse (set aside).

    The flush's hottest Python loop (every message passes once): names bound to locals,
    the collector paused (gc_paused).
    """
    records: list[tuple[Any, ...]] = []
    raws: list[str] = []
    dead: list[DeadRow] = []
    add, add_raw, loads, when = records.append, raws.append, orjson.loads, datetime.fromisoformat
    with gc_paused():
        for entry_id, fields in entries:
            seq = int(entry_id.partition("-")[0])
            m: Any = None
            try:
                js = fields[1] if fields[0] == "m" else message_json(fields)
                if js.__class__ is bytes:
                    js = js.decode("utf-8")
                m = loads(js)
                get = m.get
                f = get("file")
                rt = get("reply_to")
                # mentions: a list, absent, or {} (an empty array as Lua's cjson writes it): NULL when empty
                add((m["id"], room_id, seq, get("sender_id"), m["kind"], get("body") or "",
                     f["id"] if f else None, get("client_id"), when(m["created_at"]),
                     rt["seq"] if rt else None, get("mentions") or None))
                add_raw(js)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                # Skipping would lose it silently; refusing would block every later message of the
                # room and grow Redis without bound. Set aside, committed with the rest of the batch.
                mid = _id_or_none(m.get("id")) if isinstance(m, dict) else None
                dead.append(DeadRow(seq, mid, entry_bytes(fields), _error_text(exc)))
    return records, raws, dead


def _check_refs_sql(room_id: str, records: list[tuple[Any, ...]]) -> str:
    more = ""
    for table, col in (("users", 3), ("files", 6)):
        # Distinct values first: a batch has a few senders, and a UUID parse per row cost
        # about a fifth of the flush's Python time.
        ids = {str(uuid.UUID(v)) for v in {r[col] for r in records} if v is not None}
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
                 skip_fk: bool | None = None, fk: FkSkip | None = None) -> Written:
    """Write one batch (rows, and entries already set aside) in one transaction.

    `skip_fk` forces the choice (tests); otherwise `fk` remembers what the role may do."""
    fk = fk if fk is not None else FkSkip()
    dead = list(dead or [])
    if top is None:
        top = max([int(r[2]) for r in records] + [d.seq for d in dead] + [0])
    skip = fk.allowed is not False if skip_fk is None else skip_fk
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
                await conn.copy_records_to_table("messages", records=records, columns=_columns(records))
                await _finish(conn, room_id, top, dead, False)
                fk.allowed = True
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
                skip = fk.allowed = False
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
                await conn.copy_records_to_table("chat_flush_stage", records=records, columns=_columns(records))
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
                    await conn.copy_records_to_table("chat_flush_stage", records=records[lo:hi], columns=_columns(records))
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


def _columns(records: list[tuple[Any, ...]]) -> tuple[str, ...]:
    """The COPY's columns for these records (one look at the first: every record has the same shape)."""
    return COLUMNS if len(records[0]) == len(COLUMNS) else BASE_COLUMNS


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
