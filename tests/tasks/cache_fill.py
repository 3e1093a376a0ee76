"""Test helpers: rooms in PostgreSQL and messages in a room's Redis cache, in the accept path's format.

The accept path (app/messages.py) owns writing the cache; these helpers write exactly what
app/keys.py's docstring specifies (stream entry "<seq>-0", field "m" = the API's message
JSON, the seq counter, the pending set) so the worker can be tested on its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from redis.asyncio import Redis

from app.keys import Keys
from app.serialize import dumps, iso
from models.room import Room
from models.user import User
from tests.conftest import TEST_ENV
from tests.support import Proc, worker_argv


async def make_room() -> tuple[str, str]:
    """A user and a room owned by them (ORM rows, for the messages' foreign keys)."""
    name = f"w{uuid.uuid4().hex[:12]}"
    user = await User.create(username=name, username_lower=name, display_name=name, password_hash="x")
    room = await Room.create(name=f"room-{name}", owner=user)
    return str(user.id), str(room.id)


def message(room_id: str, seq: int, sender_id: str | None, created_at: datetime | None = None) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "room_id": room_id, "seq": seq, "sender_id": sender_id, "kind": "text",
            "body": f"message {seq}", "file": None, "client_id": f"c{seq}",
            "created_at": iso(created_at or datetime.now(timezone.utc))}


async def push(redis: Redis, keys: Keys, room_id: str, sender_id: str | None, n: int,
               created_at: datetime | None = None, age_step: timedelta | None = None) -> list[dict[str, Any]]:
    """Append n messages to the room's cache as the accept path would; returns them."""
    start = int(await redis.get(keys.room_seq(room_id)) or 0)
    out = []
    for lo in range(0, n, 2000):
        pipe = redis.pipeline(transaction=False)
        for i in range(lo, min(n, lo + 2000)):
            seq = start + i + 1
            at = created_at + (age_step * i if age_step else timedelta()) if created_at else None
            m = message(room_id, seq, sender_id, at)
            out.append(m)
            pipe.xadd(keys.room_log(room_id), {"m": dumps(m)}, id=f"{seq}-0")
        pipe.incrby(keys.room_seq(room_id), min(n, lo + 2000) - lo)
        pipe.sadd(keys.pending_rooms(), room_id)
        await pipe.execute()
    return out


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                   proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f"\n--- {proc.name} log ---\n{proc.log_tail(60)}" if proc else ""))


def start_worker(name: str, **env: str) -> Proc:
    """A real `dramatiq tasks.worker` process (stop it by PID: proc.stop() / proc.kill())."""
    full = {**TEST_ENV, "BROKER_HEARTBEAT_TIMEOUT_S": "4", "FLUSH_LEASE_S": "2", **env}
    return Proc(f"{name}-{uuid.uuid4().hex[:6]}", worker_argv(processes=1, threads=4), full)


async def wait_worker_ready(proc: Proc, timeout: float = 40.0) -> None:
    async def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log_tail(60)}")
        return "worker resources open" in proc.log_tail(200)
    await wait_for(ready, timeout, f"{proc.name} to boot", proc)
