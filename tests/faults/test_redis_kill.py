"""kill -9 Redis (AOF, fsync every second) while messages pour in over HTTP, restart it on the
same data directory: no acknowledged message is lost, seqs stay gap-free.

The contract (API.md, Durability): a Redis *process* crash loses nothing with `everysec`,
because Redis writes the AOF to the OS before it replies and kill -9 does not drop the OS
page cache. So even the acks of the last milliseconds before the kill must survive."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.store.client import connect_redis
from tests.faults._kit import Clock, Load, drained, pg_messages, report, users_and_rooms, verdict

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 10


@pytest.mark.timeout(150)
async def test_redis_killed_during_ingest_loses_no_ack_and_keeps_seqs_gap_free(stack) -> None:
    clock = Clock()
    # A low backlog threshold: the worker flushes while the load runs, so the kill also
    # hits flushes in progress.
    env = {"FLUSH_BACKLOG_THRESHOLD": "100"}
    server, base = stack.server(**env)
    worker = stack.worker(**env)
    users, rooms = users_and_rooms(base, ROOMS, n_users=4)
    room_ids = [r["id"] for r in rooms]
    settings = stack.settings(**env)

    load = Load(base, users, room_ids, senders=12, client_timeout_s=30).start()
    await load.until_acked(1_500)
    acked_before_kill = len(load.ledger.acked)
    stack.redis.kill9()
    t_kill = time.monotonic()
    last_ack_before = max(s.t1 for s in load.sent if s.status == 201 and s.t1 <= t_kill)
    acks_last_100ms = sum(1 for s in load.sent if s.status == 201 and t_kill - 0.1 <= s.t1 <= t_kill)
    await asyncio.sleep(1.5)  # the senders keep trying against a dead Redis
    errors_while_down = sum(1 for s in load.sent if s.status != 201 and s.t0 >= t_kill)
    stack.redis.start()
    t_up = time.monotonic()
    await load.until_acked(len(load.ledger.acked) + 500, timeout=30)
    first_ack_after = min(s.t1 for s in load.sent if s.status == 201 and s.t0 >= t_up)
    await load.finish()
    assert acks_last_100ms > 0, "the kill must land while acks are flowing"

    redis = connect_redis(stack.redis.url)
    try:
        from app.store.keys import Keys

        keys = Keys(settings.redis_prefix)
        # The same worker (it lived through the outage) flushes everything that survived, on
        # the backlog trigger and on the scheduler's ticks (here by hand, every 2 s).
        drain = await drained(redis, keys, settings.database_url, load.ledger.acked, timeout=60,
                              settings=settings, tick_every_s=2.0)
        rows = await pg_messages(settings.database_url)
    finally:
        await redis.aclose()
    v = verdict(load.ledger, rows, room_ids)
    extra = v.in_pg - v.acked  # scripts that ran but whose reply never reached the client
    report("redis kill -9 during ingest", load=f"12 HTTP senders, {ROOMS} rooms",
           acked=v.acked, acked_before_kill=acked_before_kill, acks_in_last_100ms_before_kill=acks_last_100ms,
           last_ack_ms_before_kill=(t_kill - last_ack_before) * 1000, failed_sends=load.ledger.failed,
           errors_while_down=errors_while_down, first_ack_after_restart_s=first_ack_after - t_up,
           in_pg=v.in_pg, unacked_but_stored=extra, lost=len(v.lost), duplicated=len(v.duplicated),
           rooms_with_gaps=len(v.gaps), drain_s=drain.seconds, ticks=drain.ticks,
           statuses=load.statuses(), total_s=clock())
    assert drain.seconds is not None, "the worker did not drain the rooms after Redis came back"
    assert worker.alive() and server.alive()
    assert errors_while_down > 0, "the senders never noticed Redis was down"
    assert all(s.status in (201, 503, 0) for s in load.sent), load.statuses()
    assert v.lost == [], f"{len(v.lost)} acked messages lost"
    assert v.duplicated == []
    assert v.gaps == {}, v.gaps
    assert extra >= 0
