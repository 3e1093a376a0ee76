"""Write-behind flush: move a room's cached messages from its Redis stream into PostgreSQL.

This module drives a room's run (lease, reads, the Redis commit); the PostgreSQL write is
app/flush/write.py, the moves after a Redis rollback app/flush/reseq.py.

Detach, write, then trim. One run per room at a time (a short lease, renewed each batch).
Each batch reads up to FLUSH_BATCH_SIZE entries after `flushed` and writes them in one
transaction: straight COPY into `messages` when that is safe, else COPY into a staging
table and INSERT ... SELECT ... ON CONFLICT DO NOTHING. The same transaction raises
`rooms.last_seq` to the batch's top seq. Only after the commit does one Lua script
(app/store/lua/flush_commit.lua) advance
`flushed`, trim the stream below it (keeping the newest CACHE_TAIL entries for reads) and
drop the room from the pending set once nothing is left (with an idle TTL on its keys).

No poison: an entry that does not parse, or rows PostgreSQL refuses for their data (SQLSTATE
class 22, e.g. a NUL in a body), go to `dead_letters` in the transaction that commits the
rest of the batch (found by bisecting the batch under savepoints), so `flushed` may pass them.

Then changes to existing messages and moved read markers (app/flush/changes.py), and one
more commit script call judges the room: it leaves the pending set only when its messages,
changes (`changed`) and markers (`rdirty`) are all in PostgreSQL.

No silent drop after a Redis rollback: a conflicting (room_id, seq) whose message id is not
in PostgreSQL is an orphan (Redis re-issued a seq PostgreSQL holds). After the commit, one
script (app/store/lua/reseq.lua) raises the counter above PostgreSQL's max, re-appends each orphan under a
new seq (same id and client_id), trims the stream up to the batch so nothing shadows the
PostgreSQL rows, and publishes the moved messages plus a `resync` event. The normal commit
script then advances `flushed`; the moved messages are flushed by a later batch.

A crash anywhere leaves `flushed` at or below what PostgreSQL holds: the next run re-reads
at most one batch and the unique (room_id, seq) turns the rewrite into a no-op (orphans are
found again and moved; the move itself is idempotent, it checks the old entry is still
there). Losing the lease (a stalled batch outlived it) is harmless for the same reason."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import ConnectionPool, Redis

# Re-exported: callers (the tick, the CLI, tests) know the flush by this module.
from app.flush.changes import ChangesResult, flush_changes, flush_markers
from app.flush.reseq import check_redis_restart, reseq  # noqa: F401
from app.flush.write import (DATA_ERRORS, DeadRow, FkSkip, Written, _error_text, _id_or_none,  # noqa: F401
                             _write, gc_paused, rows_of)
from app.counters import FLUSHED_ROWS
from app.store import pending, scripts
from app.store.client import is_cluster
from app.store.keys import Keys
from app.settings import Settings

log = logging.getLogger("chat.flush")

# A run stops after this long even if the room keeps receiving messages; the room stays
# pending, so the next tick (or backlog trigger) continues. Keeps one hot room from
# pinning a worker thread forever.
MAX_RUN_S = 60.0

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
    changes: int = 0  # changes (edits, deletes, reactions) written
    markers: int = 0  # read markers written
    files: int = 0  # files of deleted messages whose bytes were removed
    left: bool = False  # changes or markers left over by a stop (deadline, lost lease)


@dataclass
class _Batch:
    entries: int  # stream entries read
    records: list[tuple[Any, ...]]  # rows for COPY
    raws: list[str]  # each record's "m" field as read (for a dead letter)
    top: int  # highest seq read (the `after` we read from when nothing was there)
    dead: list[DeadRow] = field(default_factory=list)  # entries that did not parse


def _raw_reader(redis: Redis) -> Redis:
    """A client on the same pool whose XRANGE replies stay as Redis sends them.

    redis-py turns every stream entry into a dict, about a fifth of the flush's Python
    time; the raw reply is [[entry_id, [field, value, ...]], ...]. Shares the pool (and
    its decode_responses), so it opens no connection of its own and needs no closing.
    A RedisCluster shares its response callbacks with all its users: there, _ClusterRawReader.
    """
    if is_cluster(redis):
        return _ClusterRawReader(redis)  # type: ignore[return-value]
    raw = Redis(connection_pool=redis.connection_pool)
    raw.set_response_callback("XRANGE", lambda response, **options: response)
    return raw


class _ClusterRawReader:
    """XRANGE through a cluster client (it follows slot moves), its parsed entries turned back
    into the raw reply's shape; and the bytes re-read on a short-lived client of the key's node."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    async def xrange(self, name: str, min: str, max: str, count: int) -> list[Any]:  # noqa: A002
        entries = await self.cluster.xrange(name, min=min, max=max, count=count)
        return [[entry_id, [x for kv in fields.items() for x in kv]] for entry_id, fields in entries]

    def bytes_client(self, key: str) -> Redis:
        node = self.cluster.get_node_from_key(key)
        kw = node.connection_kwargs
        return Redis(host=node.host, port=node.port, username=kw.get("username"), password=kw.get("password"),
                     socket_timeout=kw.get("socket_timeout"), socket_connect_timeout=kw.get("socket_connect_timeout"),
                     decode_responses=False)


async def _read(raw: Redis, keys: Keys, room_id: str, after: int, count: int) -> _Batch:
    """The next `count` cache entries after seq `after`, parsed into rows (`raw`: _raw_reader)."""
    with gc_paused():  # the reply's parse and the rows (write.py: why)
        try:
            entries = await raw.xrange(keys.room_log(room_id), min=str(after + 1), max="+", count=count)
        except UnicodeDecodeError:
            # An entry that is not UTF-8 (nothing the accept path writes): read this batch as bytes.
            entries = await _read_bytes(raw, keys, room_id, after, count)
        records, raws, dead = rows_of(room_id, entries)
    top = int(entries[-1][0].partition("-")[0]) if entries else after
    return _Batch(len(entries), records, raws, top, dead)


async def _read_bytes(raw: Redis, keys: Keys, room_id: str, after: int, count: int) -> list[Any]:
    """The same XRANGE on a short-lived bytes client; entry ids decoded, fields left as bytes."""
    if isinstance(raw, _ClusterRawReader):
        client = raw.bytes_client(keys.room_log(room_id))
        pool = client.connection_pool
    else:
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


async def flush_room(room_id: str, *, redis: Redis, keys: Keys, settings: Settings,
                     pool: asyncpg.Pool, max_run_s: float = MAX_RUN_S, fk: FkSkip | None = None) -> FlushResult:
    """Flush one room's cache to PostgreSQL until drained; a no-op if another worker is on it.

    `fk`: the process's memory of whether its role may skip the triggers (Resources.fk_skip)."""
    result = FlushResult(room_id)
    fk = fk if fk is not None else FkSkip()
    started = time.perf_counter()
    try:
        uuid.UUID(room_id)
    except ValueError:
        # Not a room id at all (nothing the accept path writes): forget it, or it stays forever.
        await redis.srem(keys.pending_set(room_id), room_id)
        result.drained = True
        return result
    token = uuid.uuid4().hex
    lease_key = keys.room_flush_lease(room_id)
    lease_ms = settings.flush_lease_s * 1000
    # The lease, the trigger re-armed (what arrives from now on may ask for another run) and
    # where the flush stands: one script, one round trip.
    started_run = await scripts.FLUSH_LEASE(redis, [lease_key, keys.room_flush_queued(room_id),
                                                    keys.room_flushed(room_id)], [token, lease_ms])
    if not int(started_run[0]):
        # The holder reads on to the end of the stream, so it also writes what made us run.
        result.busy = True
        return result
    commit_keys = [keys.room_log(room_id), keys.room_flushed(room_id), keys.room_seq(room_id),
                   keys.pending_set(room_id), lease_key, keys.room_members(room_id), keys.room_changed(room_id),
                   keys.room_reads_dirty(room_id), keys.room_version(room_id), keys.room_state(room_id)]
    read_ahead: asyncio.Task[_Batch] | None = None
    try:
        flushed = int(started_run[1])
        size = settings.flush_batch_size
        raw = _raw_reader(redis)
        while True:
            batch = await (read_ahead or _read(raw, keys, room_id, flushed, size))
            read_ahead = None
            if batch.entries == size:
                # Probably more: read and parse the next batch while this one is written.
                # Safe: entries after batch.top are trimmed only once some flush committed them.
                read_ahead = asyncio.create_task(_read(raw, keys, room_id, batch.top, size))
            tail = settings.cache_tail
            if batch.records or batch.dead:
                written = await _write(pool, room_id, batch.records, raws=batch.raws, dead=batch.dead,
                                       top=batch.top, fk=fk)
                for d in written.dead:
                    log.error("flush room=%s seq=%d: entry set aside in dead_letters (%s)", room_id, d.seq, d.error)
                result.skipped += len(written.dead)
                if written.dead:
                    # No tail this time: a set-aside entry must not stay readable from Redis (a
                    # garbage one would even break history reads of the room).
                    tail = 0
                result.rows += (len(batch.records) - (len(written.dead) - len(batch.dead))
                                - len(written.orphans))
                if written.orphans:
                    # After the commit (the good rows are safe), before `flushed` passes them.
                    result.reseq += len(await reseq(redis, keys, settings, room_id, batch.records, batch.top,
                                                    written))
            result.batches += 1 if batch.entries else 0
            flushed, drained, held, changes_waiting, markers_waiting = await scripts.FLUSH_COMMIT(
                redis, commit_keys, [batch.top, tail, room_id, token, lease_ms, settings.room_cache_idle_ttl_s])
            result.flushed, result.drained = int(flushed), bool(drained)
            # A short batch means we reached the end of the stream as it was when read. What
            # arrived since is pending and gets its own run (backlog trigger or next tick):
            # chasing a live room's tail with tiny batches would pin this worker thread.
            if (batch.entries < size or drained or not held
                    or time.perf_counter() - started > max_run_s):
                break
        if not drained:
            # Not drained with every message written: changes or read markers wait (or, after a
            # stop, messages too: then the changes of what is written still go now).
            if held:
                deadline = started + max_run_s
                # Only what the commit script saw waiting (a change or marker that arrives after
                # it keeps the room pending: the judging commit below sees it, the next run writes it).
                ch = await flush_changes(room_id, redis=redis, keys=keys, settings=settings, pool=pool,
                                         deadline=deadline) if int(changes_waiting) else ChangesResult()
                mk = await flush_markers(room_id, redis=redis, keys=keys, settings=settings, pool=pool,
                                         deadline=deadline) if int(markers_waiting) else ChangesResult()
                result.changes, result.markers, result.files = ch.changes, mk.markers, ch.files
                result.skipped += ch.skipped
                result.left = not (ch.complete and mk.complete)
                flushed, drained, held, *_ = await scripts.FLUSH_COMMIT(
                    redis, commit_keys, [result.flushed, settings.cache_tail, room_id, token, lease_ms,
                                         settings.room_cache_idle_ttl_s])
                result.flushed, result.drained = int(flushed), bool(drained)
            else:
                result.left = True
    finally:
        if read_ahead is not None:
            read_ahead.cancel()
            await asyncio.gather(read_ahead, return_exceptions=True)
        # Releasing re-arms the trigger again: messages that arrived after our last read may
        # need a new run.
        await scripts.FLUSH_RELEASE(redis, [lease_key, keys.room_flush_queued(room_id)], [token])
    result.ms = (time.perf_counter() - started) * 1000
    # One line per run that wrote anything (tests count them per job).
    if result.rows or result.skipped or result.changes or result.markers:
        rate = result.rows / (result.ms / 1000) if result.ms else 0.0
        FLUSHED_ROWS.inc(result.rows)  # chat_flushed_rows_total (GET /metrics)
        log.info("flush room=%s rows=%d batches=%d ms=%.1f rows_per_s=%.0f flushed=%d dead=%d reseq=%d"
                 " changes=%d markers=%d files=%d", room_id, result.rows, result.batches, result.ms, rate,
                 result.flushed, result.skipped, result.reseq, result.changes, result.markers, result.files)
    return result


@dataclass
class RoomsResult:
    """What one multi-room job (tasks/flush.py flush_rooms) did."""

    results: list[FlushResult] = field(default_factory=list)  # the rooms that ran, in order
    failed: dict[str, BaseException] = field(default_factory=dict)  # room id -> what it raised
    left: list[str] = field(default_factory=list)  # not started: the job's time was up


async def flush_rooms(room_ids: list[str], *, redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool,
                      max_run_s: float = MAX_RUN_S, fk: FkSkip | None = None) -> RoomsResult:
    """Flush several rooms one after another (a room named twice runs once).

    A room that raises does not stop the others (its error is logged and returned). The job as
    a whole keeps to one run's bound: each room gets what is left of `max_run_s`, and the rooms
    not started once it is spent are returned in `left` (the first room always runs)."""
    out = RoomsResult()
    started = time.monotonic()
    rooms = list(dict.fromkeys(room_ids))
    for i, room_id in enumerate(rooms):
        left = max_run_s - (time.monotonic() - started)
        if i and left <= 0:
            out.left = rooms[i:]
            break
        try:
            out.results.append(await flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pool,
                                                max_run_s=max(left, 0.0), fk=fk))
        except Exception as exc:  # noqa: BLE001 - the other rooms still go; the caller decides
            log.warning("flush_rooms: room %s failed", room_id, exc_info=True)
            out.failed[room_id] = exc
    return out


async def flush_all_pending(*, redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool,
                            concurrency: int = 4, wait_s: float | None = None,
                            fk: FkSkip | None = None) -> list[FlushResult]:
    """Flush every room pending now up to its newest message now, in this process.

    Rooms a worker holds are retried until it lets go (or `wait_s`, default three leases).
    """
    deadline = time.monotonic() + (wait_s if wait_s is not None else 3 * settings.flush_lease_s)
    gate = asyncio.Semaphore(concurrency)
    fk = fk if fk is not None else FkSkip()

    async def one(room_id: str) -> FlushResult:
        target = int(await redis.get(keys.room_seq(room_id)) or 0)
        total = FlushResult(room_id)
        while True:
            async with gate:
                res = await flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pool, fk=fk)
            total.rows += res.rows
            total.batches += res.batches
            total.skipped += res.skipped
            total.reseq += res.reseq
            total.changes += res.changes
            total.markers += res.markers
            total.files += res.files
            total.left = res.left
            total.ms += res.ms
            total.flushed, total.busy = res.flushed, res.busy
            # Changes and markers pending now are written by any run that did not stop early.
            total.drained = res.drained or (not res.busy and res.flushed >= target and not res.left)
            if total.drained or time.monotonic() > deadline:
                return total
            if res.busy:
                await asyncio.sleep(0.2)

    todo = sorted(await pending.pending_rooms(redis, keys))
    return list(await asyncio.gather(*(one(r) for r in todo)))
