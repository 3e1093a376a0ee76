"""Maintenance actors: sweep expired files, prune messages past retention (see app/retention.py)."""

from __future__ import annotations

import dramatiq
from periodiq import cron

from app import retention
from tasks.broker import resources, settings


# Scheduled actors do not retry (the next tick does the same work); prune gets an hour
# because a first run on a large history deletes many chunks.
@dramatiq.actor(periodic=cron(settings.sweep_cron), max_retries=0, time_limit=30 * 60_000)
async def sweep_expired_files() -> None:
    """Expire files past `expires_at` (bytes removed, rows marked expired) via app.files."""
    await retention.sweep_expired_files(settings=resources().settings)


@dramatiq.actor(periodic=cron(settings.prune_cron), max_retries=0, time_limit=60 * 60_000)
async def prune_old_messages() -> None:
    """Delete messages older than RETENTION_DAYS in bounded chunks, then their files."""
    res = resources()
    await retention.prune_old_messages(settings=res.settings, pool=res.pool())
