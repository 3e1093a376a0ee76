"""Test support (not a test module): rooms in PostgreSQL, and messages sent into a room's Redis cache
by the real accept path.

`push` sends through app.messages.accept_message, the same call the HTTP and WebSocket
handlers make (member check, idempotency, seq, the stream entry, the pending set, the
fan-out publish, the backlog trigger), so the flush is tested on exactly what the server
writes. `message` builds a stream entry by hand, for tests that inject what the accept
path would never write.

`FlushGate` and `flush_upto` run the real flush (app.flush.flush_room) with its pool held
after each COMMIT, so a test can read inside the window where a batch is in both stores.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable
from unittest import mock

from redis.asyncio import Redis

from app import messages
from app.flush import FlushResult, flush_room
from app.resources import Resources
from app.store.keys import Keys
from app.serialize import iso
from app.settings import Settings
from models.room import Membership, Role, Room
from models.user import User
from tests.env import TEST_ENV, engine_of
from tests.support import Proc, worker_argv

# Concurrent sends per round: the accept batcher pipelines them into few round trips.
PUSH_CONCURRENCY = 200
# Backlog threshold of a fill that must not enqueue flush jobs (see `push(trigger=...)`).
NO_TRIGGER = 10**12


async def make_room() -> tuple[str, str]:
    """A user and a room owned by them (ORM rows, with the owner's membership)."""
    name = f"w{uuid.uuid4().hex[:12]}"
    user = await User.create(username=name, username_lower=name, display_name=name, password_hash="x")
    room = await Room.create(name=f"room-{name}", owner=user)
    await Membership.create(room=room, user=user, role=Role.OWNER)
    return str(user.id), str(room.id)


def message(room_id: str, seq: int, sender_id: str | None, created_at: datetime | None = None) -> dict[str, Any]:
    """A hand-made message in the API's shape (only for injecting entries the accept path would not write)."""
    return {"id": str(uuid.uuid4()), "room_id": room_id, "seq": seq, "sender_id": sender_id, "kind": "text",
            "body": f"message {seq}", "file": None, "client_id": f"c{seq}",
            "created_at": iso(created_at or datetime.now(timezone.utc))}


def _settings_for(keys: Keys, settings: Settings | None, trigger: bool) -> Settings:
    base = settings or engine_of(keys).settings  # the engine (single/cluster) the keys are laid out for
    s = base.replace(redis_prefix=keys.prefix)
    return s if trigger else s.replace(flush_backlog_threshold=NO_TRIGGER)


async def push(redis: Redis, keys: Keys, room_id: str, sender_id: str | None, n: int,
               created_at: datetime | None = None, age_step: timedelta | None = None, *,
               settings: Settings | None = None, trigger: bool = False) -> list[dict[str, Any]]:
    """Send n messages into the room through app.messages.accept_message; returns them in seq order.

    `sender_id` joins the room first if it is not a member (as a client would). `created_at`
    (plus `age_step` per message) fixes the accept path's clock, for retention tests; those
    sends go one at a time so the times follow the seqs. `trigger=False` (the default) sets
    the backlog threshold out of reach, so a fill enqueues no flush_room job; pass
    `trigger=True` to get the accept path's own backlog trigger with `settings`' threshold.
    """
    s = _settings_for(keys, settings, trigger)
    if sender_id is not None:
        await Membership.get_or_create(room_id=room_id, user_id=sender_id, defaults={"role": Role.MEMBER})

    res = Resources.build(s, redis, keys)

    async def one(i: int) -> dict[str, Any]:
        msg, created = await messages.accept_message(res, room_id=room_id, sender_id=sender_id,
                                                     body=f"message {i}", client_id=f"fill-{uuid.uuid4().hex[:16]}")
        assert created, msg
        return msg

    try:
        return await _push(one, n, created_at, age_step)
    finally:
        await res.close()


async def _push(one: Any, n: int, created_at: datetime | None,
                age_step: timedelta | None) -> list[dict[str, Any]]:
    counter = iter(range(n))
    out: list[dict[str, Any]] = []
    if created_at is not None:
        for i in counter:
            at = created_at + (age_step * i if age_step else timedelta())
            with mock.patch.object(messages, "now_iso", lambda at=at: iso(at)):
                out.append(await one(i))
    elif n:
        # The first send alone: it rebuilds what Redis does not hold yet (member set, counter)
        # once, instead of every concurrent send of the first round doing it.
        out.append(await one(0))
        for lo in range(1, n, PUSH_CONCURRENCY):
            out += await asyncio.gather(*(one(i) for i in range(lo, min(n, lo + PUSH_CONCURRENCY))))
    return sorted(out, key=lambda m: m["seq"])


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                   proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f"\n--- {proc.name} log ---\n{proc.log_tail(60)}" if proc else ""))


def start_worker(name: str, base_env: dict[str, str] | None = None, **env: str) -> Proc:
    """A real `dramatiq tasks.worker` process (stop it by PID: proc.stop() / proc.kill()).

    `base_env` is TEST_ENV unless given: pass an `isolated` env so the worker consumes only
    the jobs of its own Dramatiq namespace.
    """
    full = {**(base_env or TEST_ENV), "BROKER_HEARTBEAT_TIMEOUT_S": "4", "FLUSH_LEASE_S": "2", **env}
    return Proc(f"{name}-{uuid.uuid4().hex[:6]}", worker_argv(processes=1, threads=4), full)


async def wait_worker_ready(proc: Proc, timeout: float = 40.0) -> None:
    async def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log_tail(60)}")
        return "worker resources open" in proc.log_tail(200)
    await wait_for(ready, timeout, f"{proc.name} to boot", proc)


class FlushGate:
    """The flush's asyncpg pool, held after each PostgreSQL COMMIT until the test lets it go.

    Pass it as `pool=` to app.flush.flush_room: the real flush runs unchanged, but after a
    batch commits it waits, still before its Redis step (advance `flushed`, trim). While it
    waits the batch is in PostgreSQL *and* in the room's stream; a test does its reads
    there (`async with gate.paused(task)`) and so proves they overlapped that window.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.commits = 0
        self._paused = asyncio.Event()
        self._resume = asyncio.Event()

    def acquire(self, *args: Any, **kwargs: Any) -> "_GatedAcquire":
        return _GatedAcquire(self, self.pool.acquire(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    async def _after_commit(self) -> None:
        self.commits += 1
        self._resume.clear()
        self._paused.set()
        await self._resume.wait()

    async def wait_paused(self, flush: "asyncio.Task[Any]", timeout: float = 30.0) -> bool:
        """True once the flush waits after a commit; False if the flush task ended first."""
        paused = asyncio.ensure_future(self._paused.wait())
        try:
            await asyncio.wait({paused, flush}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            paused.cancel()
        if self._paused.is_set():
            return True
        if flush.done():
            flush.result()  # re-raise a failed flush
            return False
        raise AssertionError(f"the flush neither committed nor ended within {timeout}s")

    def resume(self) -> None:
        self._paused.clear()
        self._resume.set()


class _GatedAcquire:
    def __init__(self, gate: FlushGate, inner: Any) -> None:
        self.gate, self.inner = gate, inner

    async def __aenter__(self) -> "_GatedConn":
        return _GatedConn(self.gate, await self.inner.__aenter__())

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.inner.__aexit__(*exc)


class _GatedConn:
    def __init__(self, gate: FlushGate, conn: Any) -> None:
        self._gate, self._conn = gate, conn

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        out = await self._conn.execute(query, *args, **kwargs)
        if query.rstrip().rstrip(";").upper().endswith("COMMIT"):
            await self._gate._after_commit()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def flush_upto(redis: Redis, keys: Keys, settings: Settings, pool: Any, room_id: str, upto: int,
                     cache_tail: int = 0) -> FlushResult:
    """The real flush (app.flush.flush_room) of the room's entries up to seq `upto`, as one batch."""
    done = int(await redis.get(keys.room_flushed(room_id)) or 0)
    assert upto > done, (upto, done)
    s = settings.replace(flush_batch_size=upto - done, cache_tail=cache_tail)
    res = await flush_room(room_id, redis=redis, keys=keys, settings=s, pool=pool, max_run_s=0)
    assert res.flushed == upto and not res.busy, res
    return res
