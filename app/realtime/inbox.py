"""Reading a WebSocket client's frames, straight from the websockets protocol of Sanic's socket.

Split from app/realtime/connection.py (which writes to clients): this is the receiving half.
Every touch of Sanic's or websockets' internals goes through app/glue.py (`RawSocket`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from app.glue import CLOSED, Opcode, RawSocket

if TYPE_CHECKING:
    from app.realtime.connection import Connection


class Inbox:
    """The client's frames, read straight from the websockets protocol of Sanic's socket.

    Sanic's own path costs, per received frame, a task (async_data_received), two locks and
    two events in its frame assembler, and in `recv()` another task, a future and an
    `asyncio.wait`. Here `data_received` parses the bytes and appends whole messages to a
    deque; the handler awaits one future only when the deque is empty. Close handling is
    Sanic's: a close frame or EOF cancels the waiting read (as `recv()` does), replies the
    protocol generates (pong, close) go out through Sanic's `send_data`, a pong clears the
    connection's outstanding heartbeat ping (and reaches Sanic's `process_pong` when a
    `ws.ping()` waits for one), and an oversized message fails the connection with 1009 in
    the protocol itself. Reading pauses while too many messages wait.
    """

    __slots__ = ("sock", "proto", "items", "waiter", "closed", "paused", "parts", "text", "conn")

    PAUSE_AT, RESUME_AT = 32, 4

    def __init__(self, ws: Any) -> None:
        self.sock = sock = RawSocket(ws)  # bound once: the Connection shares it (Session)
        self.proto = sock.proto  # websockets' sans-I/O protocol, driven per received chunk
        # A list, not a deque: an empty deque costs 760 bytes per idle connection; at most
        # PAUSE_AT messages wait before reading pauses, so pop(0) stays cheap.
        self.items: list[str | bytes] = []
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.paused = False
        self.parts: list[bytes] | None = None  # a fragmented message being assembled
        self.text = False
        self.conn: Connection | None = None  # set by the session: whose heartbeat a pong answers
        sock.take_over_reading(self.data_received, self.process_events)

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        out = proto.data_to_send()
        events = proto.events_received()
        if out:
            asyncio.get_running_loop().create_task(self.sock.send_replies(out))
        if events:
            self._take(events)

    async def process_events(self, events: list[Any]) -> None:
        """For Sanic tasks scheduled before we took over (data received during the handshake)."""
        self._take(events)

    def _take(self, events: list[Any]) -> None:
        got = False
        for ev in events:
            op = ev.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                if ev.fin:
                    got = self._put(op is Opcode.TEXT, ev.data) or got
                else:
                    self.text, self.parts = op is Opcode.TEXT, [ev.data]
            elif op is Opcode.CONT:
                if self.parts is not None:
                    self.parts.append(ev.data)
                    if ev.fin:
                        data, self.parts = b"".join(self.parts), None
                        got = self._put(self.text, data) or got
            elif op is Opcode.PONG:
                if self.conn is not None:
                    self.conn.ping_out = False
                if self.sock.pong_awaited():  # someone awaits ws.ping(): Sanic matches the payload
                    asyncio.get_running_loop().create_task(self.sock.process_pong(ev))
            elif op is Opcode.CLOSE:
                self.closed = True
                self._cancel()
        if got:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if len(self.items) >= self.PAUSE_AT and not self.paused:
                self.paused = self.sock.pause_reading()

    def _put(self, text: bool, data: bytes) -> bool:
        if text:
            try:
                self.items.append(data.decode())
            except UnicodeDecodeError:
                self.sock.fail(1007, "invalid UTF-8")
                self.closed = True
                self._cancel()
                return False
        else:
            self.items.append(data)
        return True

    def _cancel(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def recv(self) -> str | bytes:
        """The next message; CancelledError once the client closed (as Sanic's `recv()`)."""
        items = self.items
        while not items:
            if self.closed or self.proto.state is CLOSED:
                raise asyncio.CancelledError()
            sock = self.sock
            self.waiter = waiter = asyncio.get_running_loop().create_future()
            sock.set_recv_waiter(waiter)  # Sanic's EOF and close paths cancel it, ending the read
            try:
                await waiter
            finally:
                self.waiter = None
                sock.set_recv_waiter(None)
        data = items.pop(0)
        if self.paused and len(items) <= self.RESUME_AT:
            self.paused = False
            self.sock.resume_reading()
        return data
