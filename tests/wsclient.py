"""The tests' WebSocket client: `WS` for JSON frames, `RawWS` when a test needs the frames themselves.

A support module, not a test module: every test that talks to /ws uses these two, so no test
builds handshakes or parses frames of its own. `WS` is the `websockets` client (its handshake
errors, e.g. InvalidStatus with the refusal's status and body, and ConnectionClosed with the
close code, surface unchanged). `RawWS` is the load generator's lean connection
(bench.wsclient.WSConn, shared so both check the handshake and cut frames one way), for what
`websockets` does on its own and a test must control: answering the server's pings.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import websockets

from bench.wsclient import WSConn, open_ws


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


class RawWS:
    """A frame-level connection: counts the server's pings, answers them only if told to.

    Text frames are queued as parsed JSON; `lost()` waits for the server to drop the socket and
    gives its close code (None when it closed without a close frame).
    """

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.conn: WSConn | None = None

    @classmethod
    async def open(cls, url: str, token: str | None = None, *, answer_pings: bool = True,
                   timeout: float = 10.0) -> "RawWS":
        """Connect and complete the handshake (a refusal raises ConnectionError naming the status)."""
        ws = cls()
        full = f"{url}?token={token}" if token else url
        ws.conn = await open_ws(full, ws._on_text, timeout=timeout, answer_pings=answer_pings)
        return ws

    def _on_text(self, conn: WSConn, payload: "bytes | memoryview") -> None:
        self.frames.put_nowait(json.loads(bytes(payload)))

    @property
    def pings(self) -> int:
        assert self.conn is not None
        return self.conn.pings

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    def send(self, frame: dict[str, Any]) -> None:
        assert self.conn is not None
        assert self.conn.send_text(json.dumps(frame).encode()), "the connection is gone"

    async def wait_pings(self, n: int, timeout: float) -> None:
        """Until the server has pinged `n` times (fails if the connection is lost first)."""
        assert self.conn is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.conn.pings < n:
            assert not self.conn.closed, f"closed ({self.conn.close_code}) after {self.conn.pings} ping(s)"
            assert loop.time() < deadline, f"{self.conn.pings} ping(s) within {timeout}s, expected {n}"
            await asyncio.sleep(0.05)

    async def lost(self, timeout: float) -> int | None:
        """Wait until the socket is gone; the server's close code."""
        assert self.conn is not None
        await asyncio.wait_for(asyncio.shield(self.conn.lost), timeout)
        return self.conn.close_code

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
