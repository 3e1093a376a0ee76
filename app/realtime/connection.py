"""This process's WebSocket connections: outbound queues, heartbeat, acks in event order.

The process's registry of connections by user and room is app/realtime/registry.py: the
LOCAL half of the fan-out (events reach every process through Redis pub/sub,
app/realtime/fanout.py, and each process delivers to its own sockets).

Each connection has a bounded outbound queue drained by one writer task, so
one slow client never stalls delivery to the others and frames leave in the
order they were queued. A frame is serialized and framed once (`Frame`) and
the same bytes are written to every recipient. Reading frames is app/realtime/inbox.py.
Sanic's socket is written below its API only through app/glue.py (`RawSocket`, bound once).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from typing import Any, Protocol

import orjson

from app.glue import RawSocket, bind
from app.realtime.events import message_of_frame
from app.serialize import dumps

log = logging.getLogger("chat.ws")

ACK_FALLBACK_S = 1.0  # an ack normally rides the ordered event stream; check on it after this long
ACK_GIVE_UP_S = 10.0  # a stream this late is broken: tell the client to resync and ack directly
CLOSE_GRACE_S = 5.0  # after sending a close frame, how long the client may take to answer
SLOW_CLIENT_CODE = 1013  # "try again later": the client did not read its frames fast enough
PING_TIMEOUT_CODE = 1011  # the client stopped answering pings
PING_FRAME = b"\x89\x02hb"  # a server ping (unmasked, FIN), the same bytes for every connection


class Frame:
    """An outbound text frame: its JSON text and its wire bytes (a server frame is unmasked)."""

    __slots__ = ("text", "data")

    def __init__(self, text: str) -> None:
        self.text = text
        payload = text.encode()
        n = len(payload)
        if n < 126:
            header = bytes((0x81, n))
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 127, n)
        self.data = header + payload


class Generations(Protocol):
    """What a connection reads of its registry (app/realtime/registry.py, which imports this
    module): the fan-out generation, bumped each time the process's subscription is re-made."""

    gen: int


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


class Connection:
    """One WebSocket of one user on this process.

    Lean while idle (the idle-memory target counts every connection): slots, no writer task
    until a frame has to wait (backpressure, or the close), the ack bookkeeping allocated on
    first use.
    """

    __slots__ = ("id", "user_id", "family", "registry", "ws", "rooms", "closing", "_max", "_q", "_writer",
                 "_handler", "_sock", "_idle", "_pending_acks", "_early", "_sent_direct", "ping_out")

    def __init__(self, ws: Any, user_id: str, max_queue: int = 1000, family: str = "",
                 registry: Generations | None = None, sock: RawSocket | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.user_id = user_id
        self.family = family  # the login (refresh family) whose access token opened this socket
        self.registry = registry  # its fan-out generation tells a lagging stream from a broken one
        self.ws = ws
        self.rooms: set[str] = set()
        self.closing = False
        self._max = max_queue
        self._q: list[Frame | _Close] = []  # a list: a deque costs 760 bytes even when empty
        self._writer: asyncio.Task[None] | None = None  # runs only while frames wait
        self._handler: asyncio.Task[Any] | None = None
        # Write our pre-built frame bytes straight to the transport under Sanic's own send
        # lock (same framing websockets would produce, without re-encoding per recipient).
        # None: not Sanic's socket (a test's fake), driven through its send() and close().
        self._sock = sock if sock is not None else bind(ws)
        self._idle = False  # True: started, and no writer has frames in hand (see push)
        # Acks travel with the room's events so they keep seq order on this connection.
        # message id -> (fallback timer, message, fan-out generation at the send, time of the send)
        self._pending_acks: dict[str, tuple[asyncio.TimerHandle, dict[str, Any], int, float]] | None = None
        self._early: set[str] | None = None  # our event arrived before the handler asked for its ack
        # acked directly (message id -> generation): ignore the event if it still comes
        self._sent_direct: dict[str, int] | None = None
        self.ping_out = False  # a heartbeat ping went out and no pong has come back yet

    # -- queueing ---------------------------------------------------------------
    def push(self, frame: Frame) -> None:
        """Send or queue a frame; a client whose queue overflows is too slow and is disconnected."""
        if self.closing:
            return
        if self._idle and not self._q and self._sock.write_now(frame.data):  # type: ignore[union-attr]
            return  # (_idle is only ever set with a raw socket)
        if len(self._q) >= self._max:
            log.warning("closing slow connection %s of user %s (%d frames queued)", self.id, self.user_id, len(self._q))
            self.abort(SLOW_CLIENT_CODE, "too slow")
            return
        self._q.append(frame)
        self._kick()

    def _kick(self) -> None:
        """Make sure a writer runs for the queued frames (once started: the hello goes first)."""
        if self._handler is None:
            return
        writer = self._writer
        if writer is None or writer.done():
            self._idle = False
            self._writer = asyncio.get_running_loop().create_task(self._run())

    def send(self, obj: dict[str, Any]) -> None:
        self.push(Frame(dumps(obj)))

    def start(self, first: Frame | None = None) -> None:
        """Start sending; `first` goes out before anything queued so far (the hello)."""
        if first is not None:
            self._q.insert(0, first)
        self._handler = asyncio.current_task()
        if self._q:
            self._kick()
        else:  # from now on a frame may skip the queue when the queue is empty and no writer runs
            # (the common case, without a task switch: RawSocket.write_now)
            self._idle = self._sock is not None

    async def _run(self) -> None:
        """Write what is queued, in order; end when the queue is empty (push starts another)."""
        ws = self.ws
        try:
            while self._q:
                batch, self._q = self._q, []
                frames: list[Frame] = []
                for item in batch:
                    if isinstance(item, _Close):
                        await self._write(frames)
                        await ws.close(item.code, item.reason)
                        return
                    frames.append(item)
                await self._write(frames)
            # Nothing in hand and nothing queued: frames may go straight out again. Set with no
            # await after the last check, so no frame can slip in between.
            self._idle = self._sock is not None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the socket went away; the handler cleans up
            log.debug("writer of %s stopped: %r", self.id, exc)
            self.closing = True
        finally:
            # A finished task kept in _writer would cost an idle connection ~600 bytes (the
            # task, its coroutine, its entry in asyncio's task set) until its next frame.
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _write(self, frames: list[Frame]) -> None:
        if not frames:
            return
        sock = self._sock
        if sock is None:
            for f in frames:
                await self.ws.send(f.text)
            return
        await sock.write(frames[0].data if len(frames) == 1 else b"".join(f.data for f in frames))

    # -- heartbeat --------------------------------------------------------------
    def heartbeat(self) -> None:
        """One beat of the process's heartbeat loop (app/realtime/fanout.py): close with 1011 when the
        previous ping got no pong within the interval, else ping again.

        The ping is written straight to the transport: a control frame may go between any two
        frames, and transport.write never splits a frame, so no lock is needed; it is written
        even when the client is not reading, so a client that stops reading is closed too.
        """
        sock = self._sock
        if self.closing or self._handler is None or sock is None:
            return
        if not sock.open:
            return  # closing already: the close handshake has its own timeout
        if self.ping_out:
            log.info("closing connection %s of user %s: no pong to the last ping", self.id, self.user_id)
            self.abort(PING_TIMEOUT_CODE)
            return
        if sock.write_control(PING_FRAME):
            self.ping_out = True

    # -- closing ----------------------------------------------------------------
    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued (graceful close handshake)."""
        if self.closing:
            return
        self._q.append(_Close(code, reason))
        self.closing = True
        self._idle = False
        self._kick()
        self._cancel_handler_later()

    def abort(self, code: int, reason: str = "") -> None:
        """Close now, dropping queued frames (the client cannot keep up)."""
        if self.closing and not self._q:
            return
        self.closing = True
        self._idle = False
        self._q = []
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        try:
            if self._sock is not None:
                self._sock.fail(code, reason)
            else:
                self.ws.fail_connection(code, reason)
        except Exception:  # noqa: BLE001
            log.debug("fail_connection on %s", self.id, exc_info=True)
        self._cancel_handler_later()

    def _cancel_handler_later(self) -> None:
        handler = self._handler
        if handler is not None and not handler.done():
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, lambda: handler.done() or handler.cancel())

    async def drain(self, timeout: float = CLOSE_GRACE_S) -> None:
        """Let the writer send what is queued (and a queued close) before the handler ends."""
        writer = self._writer
        if writer is not None and not writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(writer), timeout)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass

    def stop(self) -> None:
        """The handler ended: stop the writer and pending timers."""
        self.closing = True
        self._idle = False
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        if self._pending_acks:
            for timer, *_ in self._pending_acks.values():
                timer.cancel()
            self._pending_acks.clear()

    # -- acks in event order ----------------------------------------------------
    def own_message(self, text: str) -> None:
        """Our own message came back through the event stream: the ack goes out in its place."""
        body = message_of_frame(text)
        mid, client_id = _id_and_client_id(body)
        if self._sent_direct and self._sent_direct.pop(mid, None) is not None:
            return
        self.push(Frame('{"type":"ack","client_id":' + client_id + ',"message":' + body + "}"))
        entry = self._pending_acks.pop(mid, None) if self._pending_acks else None
        if entry is not None:
            entry[0].cancel()
        else:
            if self._early is None:
                self._early = set()
            self._early.add(mid)

    def expect_ack(self, message: dict[str, Any], generation: int | None = None) -> None:
        """The handler accepted a message: its ack goes out with its event, in seq order.

        `generation` is the fan-out generation read before the send: while it is unchanged the
        event is on its way behind the room's earlier events, so acking before it would let
        ack(n) overtake message(n-1). Only a broken stream (a new generation, or no event for
        ACK_GIVE_UP_S) makes the ack go out directly.
        """
        mid = message["id"]
        if self._early and mid in self._early:
            self._early.discard(mid)
            return
        if self._pending_acks is None:
            self._pending_acks = {}
        if generation is None:
            generation = self.registry.gen if self.registry is not None else 0
        loop = asyncio.get_running_loop()
        timer = loop.call_later(ACK_FALLBACK_S, self._ack_fallback, mid)
        self._pending_acks[mid] = (timer, message, generation, time.monotonic())

    def _ack_fallback(self, mid: str) -> None:
        entry = self._pending_acks.get(mid) if self._pending_acks else None
        if entry is None or self.closing:
            return
        _, message, generation, sent_at = entry
        current = self.registry.gen if self.registry is not None else generation + 1
        if current == generation and time.monotonic() - sent_at < ACK_GIVE_UP_S:
            # The stream is alive: the event is late, not lost. Keep waiting for it.
            timer = asyncio.get_running_loop().call_later(ACK_FALLBACK_S, self._ack_fallback, mid)
            self._pending_acks[mid] = (timer, message, generation, sent_at)  # type: ignore[index]
            return
        del self._pending_acks[mid]  # type: ignore[union-attr]
        if current == generation:  # no event for ACK_GIVE_UP_S: earlier ones may be stuck too
            log.warning("no fan-out event for message %s of connection %s; acking directly", mid, self.id)
            self.send({"type": "resync", "room_id": message.get("room_id"), "reason": "fanout_gap"})
        self._ack_directly(message)

    def _ack_directly(self, message: dict[str, Any]) -> None:
        if self._sent_direct is None:
            self._sent_direct = {}
        self._sent_direct[message["id"]] = self.registry.gen if self.registry is not None else 0
        self.send({"type": "ack", "client_id": message.get("client_id"), "message": message})

    def fanout_gap(self, generation: int, resync: Frame) -> None:
        """The process's subscription dropped and is back (now `generation`): events published
        meanwhile are lost. Tell the client to sync, and ack what the lost events would have."""
        self.push(resync)
        if self._sent_direct:  # events older than the previous subscription can no longer come
            self._sent_direct = {m: g for m, g in self._sent_direct.items() if g >= generation - 1}
        if self._pending_acks:
            pending, self._pending_acks = self._pending_acks, {}
            for timer, message, *_ in sorted(pending.values(), key=lambda e: e[1].get("seq", 0)):
                timer.cancel()
                self._ack_directly(message)


_ID_HEAD = '{"id":"'
_CID_KEY, _AT_KEY = ',"client_id":', ',"created_at":'


def _id_and_client_id(body: str) -> tuple[str, str]:
    """A message JSON's id and its client_id as JSON text, sliced out without a full parse.

    The cache and direct mode both render id first and client_id just before created_at
    (app/messages.py); any other shape is parsed. A quote inside a string value is always
    escaped, so the last ',"client_id":' is the top-level key.
    """
    if body.startswith(_ID_HEAD) and body[43:44] == '"':
        i = body.rfind(_CID_KEY)
        j = body.find(_AT_KEY, i) if i > 0 else -1
        if j > 0:
            return body[7:43], body[i + len(_CID_KEY):j]
    msg = orjson.loads(body)
    return msg["id"], dumps(msg.get("client_id"))
