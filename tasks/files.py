"""The upload processing actor: sniff, check, re-encode, then post the file's message."""

from __future__ import annotations

import dramatiq

from app import files
from tasks.broker import resources


# Bad input never raises (it becomes a rejection); a raise means Redis or PostgreSQL
# failed, so a few retries with backoff are worth it. The job is idempotent.
@dramatiq.actor(actor_name=files.PROCESS_ACTOR, max_retries=5, min_backoff=1_000, max_backoff=60_000,
                time_limit=5 * 60_000)
async def process_upload(file_id: str) -> None:
    """Process one upload by id (skipped unless it is still `processing`)."""
    res = resources()
    await files.process(res, file_id=file_id)
