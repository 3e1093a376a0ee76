"""Retention: delete messages older than RETENTION_DAYS (with their files), sweep expired files.

Only PostgreSQL is pruned. The Redis cache of a room keeps at most CACHE_TAIL committed
messages (plus what is not yet flushed, which is new by definition); walking every room's
stream daily would cost more than those few entries are worth. Instead history
(app/messages.py) hides every message past the retention cutoff wherever it still is, and
an idle room's keys expire after ROOM_CACHE_IDLE_TTL_S. The flush keeps rooms.last_seq, so
a counter re-seeded after the prune never hands out a deleted seq again.

The file side belongs to the files service (app/files.py): this module calls its
`purge_files_before` and `sweep_expired`. A deleted message's file is expired the same way
(bytes removed, row marked expired) by the changes flush once the tombstone is committed
(app/flush/changes.expire_files_now); the prune then deletes tombstones like any message. The cutoff itself is a rule of messages
(app/messages.py, whose history hides what is past it), so retention sits above both
services and neither imports it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app import files
from app.messages import retention_cutoff
from app.settings import Settings

log = logging.getLogger("chat.retention")

# Why chunks (PRUNE_BATCH_SIZE rows per statement, each its own transaction): one DELETE
# of a month of history would hold its row locks, WAL and dead tuples in one transaction
# for minutes, stalling flush inserts, autovacuum and replicas. Short deletes keep every
# transaction small, and a prune stopped halfway simply continues on the next run.
PRUNE_SQL = """DELETE FROM messages WHERE id IN (
  SELECT id FROM messages WHERE created_at < $1 ORDER BY created_at LIMIT $2)"""


@dataclass
class PruneResult:
    cutoff: datetime
    messages: int = 0
    chunks: int = 0
    files: int = 0  # file rows (and their bytes) purged with the period
    ms: float = 0.0


async def prune_old_messages(*, settings: Settings, pool: asyncpg.Pool,
                             now: datetime | None = None) -> PruneResult:
    """Delete messages older than the retention period in bounded chunks, then their files."""
    started = time.perf_counter()
    result = PruneResult(retention_cutoff(settings, now))
    while True:
        status = await pool.execute(PRUNE_SQL, result.cutoff, settings.prune_batch_size)
        deleted = int(status.split()[-1])
        result.messages += deleted
        result.chunks += 1
        if deleted < settings.prune_batch_size:
            break
    result.files = await files.purge_files_before(settings=settings, cutoff=result.cutoff)
    result.ms = (time.perf_counter() - started) * 1000
    log.info("prune cutoff=%s messages=%d chunks=%d files=%d ms=%.1f", result.cutoff.isoformat(),
             result.messages, result.chunks, result.files, result.ms)
    return result


async def sweep_expired_files(*, settings: Settings) -> int:
    """Expire files past `expires_at` through the files service; returns how many."""
    result = await files.sweep_expired(settings=settings)
    log.info("sweep expired=%d", result)
    return result
