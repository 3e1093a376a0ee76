"""periodiq schedules come from settings, and the one scheduler process starts with them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.env import TEST_ENV
from tests.support import ROOT, Proc

DUMP = """
import json
import tasks.worker
from tasks.broker import broker
print(json.dumps({a.actor_name: [str(a.options["periodic"]), a.options["periodic"].astuple(), a.queue_name]
                  for a in broker.actors.values() if "periodic" in a.options}))
"""


def _schedules(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", DUMP], cwd=ROOT, env={**TEST_ENV, **env}, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_schedules_flush_every_minute_sweep_hourly_prune_daily_at_four():
    from periodiq import cron

    got = _schedules({})
    assert {name: spec for name, (spec, _t, _q) in got.items()} == {
        "flush_pending": "* * * * *", "sweep_expired_files": "0 * * * *", "prune_old_messages": "0 4 * * *",
        "reconcile_memberships": "*/5 * * * *"}
    for name, (spec, parsed, _queue) in got.items():
        assert [list(x) for x in cron(spec).astuple()] == parsed
    assert "flush_room" not in got  # triggered, never scheduled


def test_schedules_follow_the_settings():
    got = _schedules({"FLUSH_CRON": "*/2 * * * *", "SWEEP_CRON": "15 */3 * * *", "PRUNE_CRON": "30 3 * * 0",
                      "RECONCILE_CRON": "7 * * * *"})
    assert {name: spec for name, (spec, _t, _q) in got.items()} == {
        "flush_pending": "*/2 * * * *", "sweep_expired_files": "15 */3 * * *", "prune_old_messages": "30 3 * * 0",
        "reconcile_memberships": "7 * * * *"}
    assert got["flush_pending"][1][0] == list(range(0, 60, 2))


pytestmark = pytest.mark.e2e  # every test here starts a process


async def test_the_scheduler_process_starts_with_every_periodic_actor_and_enqueues(isolated, redis):
    # Its own namespace: the flush_pending it enqueues must not reach another test's worker.
    ns = isolated.keys.dramatiq_namespace()
    before = set(await redis.hkeys(f"{ns}:default.msgs"))
    beats_before = set(await redis.zrange(f"{ns}:__heartbeats__", 0, -1))
    proc = Proc(f"scheduler-{uuid.uuid4().hex[:6]}", [sys.executable, "-m", "tasks.scheduler"], isolated.env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = proc.log_tail(40)
            if all(f"tasks.{m}:{a}@default" in log for m, a in (
                    ("flush", "flush_pending"), ("maintenance", "sweep_expired_files"),
                    ("maintenance", "prune_old_messages"), ("membership", "reconcile_memberships"))):
                break
            assert proc.alive(), proc.log_tail(40)
            time.sleep(0.2)
        else:
            raise AssertionError(f"scheduler did not list its actors:\n{proc.log_tail(40)}")
        assert proc.alive()
        # "* * * * *" matches the minute it starts in: flush_pending goes out at once, on the
        # broker the worker consumes, marked as scheduled (periodiq drops it if it gets stale).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            new = [json.loads(v) for k, v in (await redis.hgetall(f"{ns}:default.msgs")).items()
                   if k not in before]
            sent = [m for m in new if m["actor_name"] == "flush_pending"]
            if sent:
                break
            await asyncio.sleep(0.2)
        assert sent and "scheduled_at" in sent[0]["options"], proc.log_tail(20)
        # a producer-only process leaves no broker heartbeat behind (see app/jobs.py)
        deadline = time.monotonic() + 5
        while set(await redis.zrange(f"{ns}:__heartbeats__", 0, -1)) - beats_before:
            assert time.monotonic() < deadline, "the scheduler left a heartbeat"
            await asyncio.sleep(0.1)
    finally:
        proc.stop()
