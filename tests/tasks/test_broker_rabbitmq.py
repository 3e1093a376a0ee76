"""BROKER_URL=amqp://...: the job goes through RabbitMQ (Dramatiq's RabbitmqBroker), not Redis.

A real worker process consumes it: the server side enqueues `flush_room` by actor name
(app.jobs), the worker flushes the room's cached messages into PostgreSQL. The Redis
broker's keys stay untouched, so the job cannot have taken that way. Skipped only when no
RabbitMQ answers on 127.0.0.1:5672 (this kind of machine runs one, guest/guest).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from app import jobs, messages, rooms
from app.resources import Resources
from app.rooms import CreateRoom
from app.settings import SettingsError
from models.user import User
from tests.support import Proc, worker_argv

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
async def pg(db: None) -> Any:
    from app.db import ping_db, raw_pool

    await ping_db()
    return raw_pool()


def test_broker_url_defaults_to_redis_and_refuses_other_schemes(isolated: Any) -> None:
    assert jobs.broker_url(isolated.settings) == isolated.settings.redis_url
    with pytest.raises(SettingsError, match="BROKER_URL"):
        isolated.settings.replace(broker_url="http://127.0.0.1:5672/")


@pytest.mark.skipif(not _rabbitmq_up(), reason="no RabbitMQ on 127.0.0.1:5672 to run BROKER_URL=amqp:// against")
@pytest.mark.timeout(120)
async def test_a_job_enqueued_on_rabbitmq_runs_in_a_real_worker(redis: Redis, isolated: Any, pg: Any) -> None:
    settings = isolated.settings.replace(broker_url=AMQP_URL)
    keys = isolated.keys
    name = f"r{uuid.uuid4().hex[:10]}"
    user = await User.create(username=name, username_lower=name, display_name=name, password_hash="x")
    owner = str(user.id)
    room_id = (await rooms.create_room(redis=redis, keys=keys, owner_id=owner, data=CreateRoom(name=name)))["id"]
    res = Resources.build(settings, redis, keys)
    try:
        for i in range(5):
            await messages.accept_message(res, room_id=room_id, sender_id=owner, body=f"m{i}")
    finally:
        await res.close()

    worker = Proc(f"worker-rabbitmq-{uuid.uuid4().hex[:6]}", worker_argv(processes=1, threads=2),
                  {**isolated.env, "BROKER_URL": AMQP_URL})
    try:
        await jobs.enqueue(settings, "flush_room", room_id)
        deadline = time.monotonic() + 60
        while True:
            async with pg.acquire() as conn:
                rows = await conn.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", uuid.UUID(room_id))
            if rows == 5:
                break
            assert worker.alive(), worker.log_tail(60)
            assert time.monotonic() < deadline, f"the job did not run ({rows} rows):\n{worker.log_tail(60)}"
            await asyncio.sleep(0.2)
        assert int(await redis.get(keys.room_flushed(room_id))) == 5
        # Nothing went through the Redis broker of this deployment's namespace.
        assert await redis.keys(f"{keys.dramatiq_namespace()}:*") == []
        producer = jobs.Producer(settings)
        try:
            assert producer.queue_depths()["default"]["ready"] == 0  # consumed and acked
        finally:
            producer.close()
    finally:
        worker.stop()
