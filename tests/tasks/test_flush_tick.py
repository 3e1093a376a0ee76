"""The scheduled flush tick (tasks.flush.flush_pending) in a real worker process notices a Redis
restart (a new run_id) and raises the counters before the room's pending messages are flushed."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from app import flush, jobs, messages, rooms
from app.resources import Resources
from app.rooms import CreateRoom
from models.user import User
from tests.support import Proc, worker_argv


@pytest.fixture
async def pg(db: None) -> Any:
    from app.db import ping_db, raw_pool

    await ping_db()
    return raw_pool()


async def wait_for(check: Any, timeout: float, what: str, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log_tail(60)}")
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{proc.log_tail(60)}")


@pytest.mark.timeout(120)
async def test_the_tick_in_a_real_worker_raises_counters_after_a_redis_restart(
        redis: Redis, isolated: Any, pg: Any) -> None:
    # A prefix of its own: the fake run_id must not reach other tests, and the worker must run
    # only this test's tick (not jobs other tests left in the session's namespace).
    keys, settings = isolated.keys, isolated.settings
    name = f"t{uuid.uuid4().hex[:10]}"
    user = await User.create(username=name, username_lower=name, display_name=name, password_hash="x")
    owner = str(user.id)
    room_id = (await rooms.create_room(redis=redis, keys=keys, owner_id=owner, data=CreateRoom(name=name)))["id"]
    res = Resources.build(settings, redis, keys)
    for i in range(5):
        await messages.accept_message(res, room_id=room_id, sender_id=owner, body=f"m{i}")
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    # Redis came back from before all of it (stream, counter and flushed mark), under a new run_id
    await redis.delete(keys.room_log(room_id), keys.room_flushed(room_id))
    await redis.set(keys.room_seq(room_id), 1)
    await redis.set(keys.redis_run_id(), "the-redis-before-the-crash")
    run_id = (await redis.info("server"))["run_id"]

    worker = Proc(f"worker-tick-{uuid.uuid4().hex[:6]}", worker_argv(processes=1, threads=2), isolated.env)
    try:
        await jobs.enqueue(settings, "flush_pending")

        async def restart_seen() -> bool:
            return await redis.get(keys.redis_run_id()) == run_id
        await wait_for(restart_seen, 60, "the tick to record the new run_id", worker)

        assert int(await redis.get(keys.room_seq(room_id))) == 5
        assert await redis.get(keys.room_flushed(room_id)) is None  # the check never advances it
        assert "room counters raised" in worker.output()
    finally:
        worker.stop()
    msg, _ = await messages.accept_message(res, room_id=room_id, sender_id=owner, body="after the restart")
    await res.close()
    assert msg["seq"] == 6
