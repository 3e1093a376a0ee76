"""Retention: delete messages older than RETENTION_DAYS (with their files), sweep expired files.

Only PostgreSQL is pruned. The Redis cache of a room keeps at most CACHE_TAIL committed
messages (plus what is not yet flushed, which is new by definition); walking every room's
stream daily would cost more than those few entries are worth. Instead history
(app/messages.py) hides every message past the retention cutoff wherever it still is, and
an idle room's keys expire after ROOM_CACHE_IDLE_TTL_S. The flush keeps rooms.last_seq, so
a counter re-seeded after the prune never hands out a deleted seq again.

The file side belongs to the files service (app/files.py): this module calls its hooks
`purge_files_before(settings=, cutoff=)` and `sweep_expired(settings=)` when they exist,
imported lazily so the two can land independently. Arguments go by keyword, and only
those the hook declares.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from app.serialize import utcnow
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
    files: Any = None  # whatever purge_files_before returned (None if there is no hook)
    ms: float = 0.0


def retention_cutoff(settings: Settings, now: datetime | None = None) -> datetime:
    """Messages created before this instant are pruned."""
    return (now or utcnow()) - timedelta(days=settings.retention_days)


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
    purge = files_hook("purge_files_before")
    if purge is not None:
        result.files = await call_hook(purge, settings=settings, cutoff=result.cutoff)
    else:
        log.info("prune: app.files.purge_files_before is not available; files not purged")
    result.ms = (time.perf_counter() - started) * 1000
    log.info("prune cutoff=%s messages=%d chunks=%d files=%s ms=%.1f", result.cutoff.isoformat(),
             result.messages, result.chunks, result.files, result.ms)
    return result


async def sweep_expired_files(*, settings: Settings) -> Any:
    """Expire files past `expires_at` through the files service; log and skip if it has no hook."""
    sweep = files_hook("sweep_expired")
    if sweep is None:
        log.info("sweep: app.files.sweep_expired is not available; nothing swept")
        return None
    result = await call_hook(sweep, settings=settings)
    log.info("sweep: %s", result)
    return result


def files_hook(name: str) -> Any:
    """A function of app.files by name, or None when that module or function is missing."""
    try:
        import app.files as files
    except ImportError:
        return None
    fn = getattr(files, name, None)
    return fn if callable(fn) else None


async def call_hook(fn: Any, **kwargs: Any) -> Any:
    """Call a sync or async hook with the keyword arguments it declares (others are dropped)."""
    params = inspect.signature(fn).parameters
    result = fn(**{k: v for k, v in kwargs.items() if k in params})
    if inspect.isawaitable(result):
        result = await result
    return result
