"""The membership reconcile: every room's Redis member set compared with PostgreSQL and repaired.

Live changes keep the sets right (app/store/member_sets.py); this catches what they cannot:
a process that died between a commit and its Redis update, a Redis restored from an old
snapshot. It pages rooms from PostgreSQL and leaves alone any user whose change landed
after its snapshot, so it never races a live join or ban.
"""

from __future__ import annotations

import logging

import dramatiq
from periodiq import cron

from app import membership
from tasks.broker import resources, settings

log = logging.getLogger("chat.worker")


@dramatiq.actor(periodic=cron(settings.reconcile_cron), max_retries=0, time_limit=30 * 60_000)
async def reconcile_memberships() -> None:
    """Repair Redis member sets that differ from PostgreSQL (see app.membership.reconcile_all)."""
    res = resources()
    stats = await membership.reconcile_all(redis=res.redis, keys=res.keys)
    log.info("membership reconcile: %(rooms)d rooms, %(checked)d sets checked, "
             "%(added)d members added, %(removed)d removed", stats)
