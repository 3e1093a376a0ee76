"""Helpers for the real-time tests: a small WebSocket client and the worker's flush contract by hand."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any, Callable

import asyncpg
import websockets
from redis.asyncio import Redis

from app.keys import Keys


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

    async def nothing_for(self, seconds: float, pred: Callable[[dict[str, Any]], bool] = lambda f: True) -> None:
        """Assert no frame matching `pred` arrives within `seconds`."""
        try:
            while True:
                frame = await self.recv(seconds)
                assert not pred(frame), f"unexpected frame {frame}"
        except asyncio.TimeoutError:
            return

    async def close(self) -> None:
        await self.conn.close()


async def move_to_db(redis: Redis, keys: Keys, db_url: str, room_id: str, upto: int) -> int:
    """Exactly the worker's contract: copy stream entries <= upto into PostgreSQL
    (idempotent on (room_id, seq)), commit, mark flushed, then trim what is committed."""
    log = keys.room_log(room_id)
    entries = await redis.xrange(log, "-", f"{upto}")
    rows = []
    for _, fields in entries:
        m = json.loads(fields["m"])
        rows.append((m["id"], m["room_id"], m["seq"], m["sender_id"], m["kind"], m["body"],
                     m["file"]["id"] if m.get("file") else None, m["client_id"],
                     datetime.fromisoformat(m["created_at"].replace("Z", "+00:00"))))
    conn = await asyncpg.connect(db_url)
    try:
        await conn.executemany(
            "INSERT INTO messages (id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at)"
            " VALUES ($1::uuid, $2::uuid, $3, $4::uuid, $5, $6, $7::uuid, $8, $9)"
            " ON CONFLICT (room_id, seq) DO NOTHING", rows)
    finally:
        await conn.close()
    if rows:
        await redis.set(keys.room_flushed(room_id), max(r[2] for r in rows))
    await redis.xtrim(log, minid=upto + 1, approximate=False)
    return len(rows)
