"""Helpers for the real-time tests: a small WebSocket client, and the real flush held at will."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Callable

import websockets
from redis.asyncio import Redis

from app.flush import FlushResult, flush_room
from app.store.keys import Keys
from app.settings import Settings


class WS:
    """A `websockets` client connection speaking the API's JSON frames."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.hello: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, token: str | None = None, **kwargs: Any) -> "WS":
        full = f"{url}?token={token}" if token else url
        conn = await websockets.connect(full, max_size=None, open_timeout=10, **kwargs)
        ws = cls(conn)
        ws.hello = await ws.recv()
        assert ws.hello["type"] == "hello", ws.hello
        return ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.conn.recv(), timeout))

    async def recv_until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first frame matching `pred` (frames before it are dropped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if pred(frame):
                return frame

    async def request(self, frame: dict[str, Any], reply_type: str, timeout: float = 10.0) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv_until(lambda f: f["type"] in (reply_type, "error"), timeout)

    async def none_before(self, marker: Callable[[dict[str, Any]], bool],
                          forbidden: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """Read up to the first `marker` frame and fail if a `forbidden` frame came before it.

        Proof of absence by a positive marker instead of a quiet window: the caller makes the
        server emit the marker through the same path, after the forbidden frame would have
        been emitted (a later fan-out event, a later message of the room), so a forbidden
        frame would have to arrive first. Returns the marker frame.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            assert not forbidden(frame), f"unexpected frame before the marker: {frame}"
            if marker(frame):
                return frame

    async def close(self) -> None:
        await self.conn.close()


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
    s = dataclasses.replace(settings, flush_batch_size=upto - done, cache_tail=cache_tail)
    res = await flush_room(room_id, redis=redis, keys=keys, settings=s, pool=pool, max_run_s=0)
    assert res.flushed == upto and not res.busy, res
    return res
