"""The one scheduler is down (kill -9) while messages pile up: nothing else flushes them (the
backlog trigger is out of reach here), and the first tick of the restarted scheduler drains
every room.

FLUSH_CRON has minute granularity, so "down for 3 ticks" is not waited out: what matters is
that whatever accumulated without a scheduler is drained by its first tick. periodiq fires an
every-minute schedule at once when it starts (after the 55th second of a minute it waits for
the next one), so that first tick comes within seconds of the start."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.store.keys import Keys
from tests.faults._kit import Clock, Ledger, fill, inproc, pg_messages, report, users_and_rooms, verdict
from tests.faults._procs import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 20
PER_ROOM = 500


def ticks(proc) -> int:
    return proc.log_text().count("Scheduling Actor(flush_pending)")


@pytest.mark.timeout(150)
async def test_scheduler_down_then_first_tick_after_restart_drains_everything(stack) -> None:
    clock = Clock()
    server, base = stack.server()
    worker = stack.worker()
    users, rooms = users_and_rooms(base, ROOMS)
    room_ids = [r["id"] for r in rooms]
    # Only the schedule may flush: no backlog trigger from the sends.
    settings = stack.settings(FLUSH_BACKLOG_THRESHOLD=str(10**9))
    keys = Keys(settings.redis_prefix)
    async with inproc(settings) as ip:
        first = stack.scheduler(name="scheduler-1")
        wait_until(lambda: ticks(first) >= 1, 70, "the first scheduler's first tick")
        first.kill9()
        t_down = time.monotonic()
        # Let the worker finish the job of that last tick, so nothing queued is left behind.
        jobs = f"{keys.dramatiq_namespace()}:default.msgs"  # ready + fetched jobs
        deadline = time.monotonic() + 20
        while await ip.redis.hlen(jobs):
            assert time.monotonic() < deadline, "the worker never took the last tick's job"
            await asyncio.sleep(0.1)

        ledger = await fill(ip, room_ids, users[0].id, PER_ROOM, ledger=Ledger())
        await asyncio.sleep(2.0)  # the worker is up and idle; nothing queues a flush
        pending_while_down = await ip.redis.scard(keys.pending_rooms())
        in_pg_while_down = len(await pg_messages(settings.database_url))
        down_s = time.monotonic() - t_down
        assert pending_while_down == ROOMS and in_pg_while_down == 0, (pending_while_down, in_pg_while_down)

        # Not in a minute's last seconds, so the start-up tick is the only one until the drain
        # (start-up and drain take a few seconds; periodiq skips to the next minute after :55).
        second_of_minute = time.time() % 60
        if second_of_minute > 48:
            await asyncio.sleep(62 - second_of_minute)
        second = stack.scheduler(name="scheduler-2")
        t_start = time.monotonic()
        want = set(ledger.acked)
        drained_at_tick = None
        while time.monotonic() - t_start < 75:
            if await ip.redis.scard(keys.pending_rooms()) == 0 and \
                    want <= {r[0] for r in await pg_messages(settings.database_url)}:
                drained_at_tick = ticks(second)
                break
            await asyncio.sleep(0.2)
        drain_s = time.monotonic() - t_start
    rows = await pg_messages(settings.database_url)
    v = verdict(ledger, rows, room_ids)
    report("scheduler down, restarted", load=f"{ROOMS * PER_ROOM} msgs/{ROOMS} rooms accumulated while down",
           down_s=down_s, pending_rooms_while_down=pending_while_down, in_pg_while_down=in_pg_while_down,
           drained_s_after_scheduler_start=drain_s, ticks_of_new_scheduler_when_drained=drained_at_tick,
           acked=v.acked, in_pg=v.in_pg, lost=len(v.lost), duplicated=len(v.duplicated), total_s=clock())
    assert drained_at_tick is not None, f"not drained {drain_s:.0f}s after the scheduler restarted"
    assert drained_at_tick == 1, "drained, but not by the first tick of the restarted scheduler"
    assert v.lost == [] and v.duplicated == [] and v.in_pg == v.acked and v.gaps == {}
    assert worker.alive() and second.alive()
