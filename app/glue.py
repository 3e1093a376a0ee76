"""The one module that touches Sanic's and websockets' internals.

The hot path skips Sanic's WebSocket machinery where it was measured to cost (a task, locks
and events per received frame; re-encoding every outbound frame per recipient), and the door
(app/door.py) bends Sanic's body-size limits for one refused request. Both need objects and
attributes that neither library documents as API. They are all reached from here and only
from here, so an upgrade that changes one breaks this module and tests/app/test_glue.py, which
names the internal that changed, instead of failing somewhere on the hot path.

What is relied on, and why (the ids are the ones the test names):

websockets (its sans-I/O layer is public, but we drive the instance Sanic owns):
  W1 `websockets.protocol.State` (OPEN, CLOSING, CLOSED) and `websockets.frames.Opcode`.
  W2 the protocol's `receive_data(bytes)`, `data_to_send() -> list[bytes]`,
     `events_received() -> list[Frame]` and `state`: the Inbox parses received bytes itself.
  W3 `Frame.opcode`, `.data`, `.fin`: the events the Inbox sorts.

Sanic's per-connection WebSocket object (`sanic.server.websockets.impl.WebsocketImplProtocol`,
the `ws` a handler receives):
  S1 `ws.ws_proto`: its websockets ServerProtocol (W2), read for the state and for parsing.
  S2 `ws.io_proto`: the connection's asyncio protocol; `.transport` (write, is_closing,
     pause_reading, resume_reading) and `await .send(bytes)` (waits while writing is paused).
     It is set before the handler runs and stays for the connection's life.
  S3 `io_proto._can_write`: an asyncio.Event Sanic clears in pause_writing; a frame written
     straight to the transport skips the queue only while it is set (backpressure).
  S4 `ws.conn_mutex`: the lock Sanic's own send, ping and close hold while they write; our
     pre-framed bytes go out under it so they never interleave with Sanic's frames.
  S5 Sanic's WebSocket protocol calls `self.websocket.data_received(data)` per chunk, and
     tasks it scheduled before the take-over call `ws.process_events(events)`: both are
     looked up on the instance, so instance attributes take reading over.
  S6 `ws.assembler`: used only by Sanic's recv(), which nothing calls once we read; dropped
     (~5 KB per connection).
  S7 `ws.recv_cancel`: the future Sanic's EOF and close-frame paths cancel; our read waits on
     it so a closing client ends the read as it ends Sanic's recv().
  S8 `ws.pings` (payload -> future) and `await ws.process_pong(frame)`: a pong reaches Sanic
     only while a `ws.ping()` waits for one.
  S9 `await ws.send_data(list[bytes])`: writes what the protocol generated (pong, close).
  S10 `ws.fail_connection(code, reason)`: closes at once (1007, 1011, 1013).

  S11 `ws.recv_lock`, `ws.process_event_mutex`: asyncio locks only Sanic's recv*() and its
     own process_events take; unused once the Inbox reads (S5, S6), dropped (~350 bytes each).

What an idle WebSocket keeps of the HTTP request that opened it, released after the upgrade
(`release_handshake`; Sanic's frames hold the Request and its protocol for the connection's
life, so each attribute is emptied, not the object):
  R1 `request.head` (the raw header bytes), `request.headers` (a `sanic.compat.Header`),
     `request.parsed_args` / `request.parsed_not_grouped_args` (query-string caches, dicts),
     and `request.stream.url` (`Http.url`, the request line's target): read while routing
     and in the handshake middleware, never after the upgrade; `request.raw_url` and
     `request._parsed_url` (an httptools URL; `path`, `query_string` and `url` read it) keep
     the path only (log lines name it), not the query that carried the token.
  R2 the protocol's `websocket_url`: Sanic keeps the whole URL (token included) only for its
     access log's OPEN/CLOSE lines, which return early without `access_log` (we run without).
  R3 the protocol's `_callback_check_timeouts`: the TimerHandle of Sanic's HTTP timeout check,
     which stops rescheduling itself once the stage is HANDLER with `upgrade_websocket`.
  R4 the protocol's `_data_received` and `_can_write` (asyncio.Event): their `_waiters` deque
     (760 bytes each even when empty) becomes a list; Event only appends, removes and
     iterates it (asyncio/locks.py).

Sanic's HTTP/1.1 stream (`sanic.http.Http`, `request.stream`), for the door:
  H1 `.request_body` (falsy once read or when there is none), `.expecting_continue`,
     `.request_max_size`, `.keep_alive`, and `.protocol.request_max_size`: Sanic drains an
     unread body up to min(the stream's cap, the protocol's) before the next request, so a
     refused body is drained by raising both and closing after the answer.
  H2 `sanic.server.websockets.impl.WebsocketImplProtocol`, the class of S1-S10.

Invariants: nothing here allocates per frame; a `RawSocket` is bound once per connection
(its three slots are the only per-connection cost), and its methods are the ones the hot
path called on the Sanic objects before (the same attribute loads, one call).
"""

from __future__ import annotations

from typing import Any

from httptools import parse_url
from sanic.compat import Header
from websockets.frames import Opcode
from websockets.protocol import State

__all__ = ["Opcode", "State", "RawSocket", "bind", "drain_refused_body", "release_handshake"]

OPEN, CLOSING, CLOSED = State.OPEN, State.CLOSING, State.CLOSED

# Attributes of Sanic's WebSocket object that RawSocket uses (checked by bind and the test).
WS_ATTRS = ("ws_proto", "io_proto", "conn_mutex", "assembler", "recv_cancel", "pings", "process_pong",
            "send_data", "fail_connection", "data_received", "process_events")


class RawSocket:
    """Sanic's WebSocket of one connection, bound once: what the Inbox and the Connection use
    of it below Sanic's API (see the module docstring for each internal)."""

    __slots__ = ("ws", "proto", "io")

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.proto = ws.ws_proto  # S1: websockets' sans-I/O protocol (W2)
        self.io = ws.io_proto  # S2

    # -- reading (the Inbox) ----------------------------------------------------------
    def take_over_reading(self, data_received: Any, process_events: Any) -> None:
        """From now on received bytes go to `data_received` instead of Sanic's assembler (S5, S6)."""
        ws = self.ws
        ws.data_received = data_received
        ws.process_events = process_events
        ws.assembler = None

    def set_recv_waiter(self, waiter: Any) -> None:
        """The future Sanic's EOF and close paths cancel (S7); None when the read is over."""
        self.ws.recv_cancel = waiter

    def pong_awaited(self) -> bool:
        """A `ws.ping()` waits for a pong (S8)."""
        return bool(self.ws.pings)

    async def process_pong(self, frame: Any) -> None:
        await self.ws.process_pong(frame)  # S8

    async def send_replies(self, out: list[bytes]) -> None:
        """Write what the protocol generated on receipt (a pong, a close) while it may (S9)."""
        if self.proto.state in (OPEN, CLOSING):
            await self.ws.send_data(out)

    def pause_reading(self) -> bool:
        transport = self.io.transport if self.io is not None else None
        if transport is None:
            return False
        transport.pause_reading()
        return True

    def resume_reading(self) -> None:
        transport = self.io.transport if self.io is not None else None
        if transport is not None:
            transport.resume_reading()

    # -- writing (the Connection) ----------------------------------------------------
    def write_now(self, data: bytes) -> bool:
        """Write pre-framed bytes straight to the transport when nothing else is being written
        and the socket is not pushing back (S2, S3, S4); False: queue them instead."""
        io = self.io
        if io is None or self.ws.conn_mutex.locked() or self.proto.state is not OPEN:
            return False
        transport = io.transport
        if not io._can_write.is_set() or transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    async def write(self, data: bytes) -> None:
        """Write pre-framed bytes under Sanic's send lock, waiting while writing is paused (S2, S4)."""
        async with self.ws.conn_mutex:
            if self.proto.state is not OPEN:
                raise ConnectionError("websocket is not open")
            await self.io.send(data)

    def write_control(self, data: bytes) -> bool:
        """Write a control frame (a ping) now, even while the client is not reading: a control
        frame may go between any two frames and transport.write never splits one (S2)."""
        io = self.io
        transport = io.transport if io is not None else None
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    def fail(self, code: int, reason: str = "") -> None:
        """Close at once, without the close handshake's wait (S10)."""
        self.ws.fail_connection(code, reason)

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code, reason)

    @property
    def open(self) -> bool:
        return self.proto.state is OPEN

    @property
    def closed(self) -> bool:
        return self.proto.state is CLOSED


def bind(ws: Any) -> RawSocket | None:
    """The raw view of Sanic's WebSocket `ws`, or None for anything else (a test's fake socket,
    which the Connection then drives through its public send/close)."""
    if all(hasattr(ws, a) for a in ("ws_proto", "io_proto", "conn_mutex")):
        return RawSocket(ws)
    return None


def release_handshake(request: Any, ws: Any) -> None:
    """After the upgrade, once the handler has read what it needs of the request: let go of what
    an idle connection would otherwise keep of its HTTP request and Sanic's unused per-socket
    state (R1-R4, S11; ~4 KB per connection)."""
    request.head = b""
    path = request._parsed_url.path or b"/"
    if path != request.raw_url:
        request.raw_url = path
        request._parsed_url = parse_url(path)
    request.headers = Header()  # empty (about 100 bytes), not shared: a mutable mapping
    for cache in (request.parsed_args, request.parsed_not_grouped_args):
        cache.clear()
    stream = request.stream
    if stream is not None:
        stream.url = None
    io = getattr(ws, "io_proto", None)
    if io is not None:
        if not getattr(io, "access_log", True):
            io.websocket_url = None
        timer = getattr(io, "_callback_check_timeouts", None)
        if timer is not None:
            timer.cancel()  # the stage is HANDLER with a websocket: the check would only return
            io._callback_check_timeouts = None
        for event in (io._data_received, io._can_write):
            if not event._waiters:
                event._waiters = []
    if hasattr(ws, "recv_lock"):
        ws.recv_lock = ws.process_event_mutex = None


def drain_refused_body(request: Any, limit: int) -> None:
    """After a refusal with the body unread: let Sanic read and discard up to `limit` bytes of
    it, then close the connection (Connection: close on the answer) (H1).

    With `Expect: 100-continue` the client waits for our word before sending the body, and a
    final answer tells it not to: close without asking for (or reading) any of it."""
    stream = request.stream
    if stream is None or not getattr(stream, "request_body", None):
        return
    if getattr(stream, "expecting_continue", False):
        stream.expecting_continue = False
        stream.request_max_size = 0
        stream.keep_alive = False
        return
    # Sanic drains up to min(the request's cap, the connection's): raise both, for this
    # connection only (it closes after this answer).
    stream.request_max_size = limit
    protocol = getattr(stream, "protocol", None)
    if protocol is not None:
        protocol.request_max_size = limit
    stream.keep_alive = False
