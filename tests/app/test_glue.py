"""app/glue.py's hold on Sanic's and websockets' internals, checked on the installed versions.

Each check carries the id app/glue.py's docstring gives the internal (W1..W3, S1..S10, H1, H2),
so an upgrade that removes or changes one fails here, naming it, instead of hanging or raising
AttributeError on the hot path. The round trips drive a real app served in this process
through the glue: frames in through the Inbox, out through RawSocket.write_now and write, a
heartbeat ping and its pong, reading paused and resumed, a close ending the read, a failed
connection, and a refused request body drained.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import uuid
from typing import Any, AsyncIterator, Callable

import httpx
import pytest
import sanic
import websockets
from sanic import Request, Sanic
from sanic.http import Http
from sanic.response import HTTPResponse, text
from sanic.server.protocols.base_protocol import SanicProtocol
from sanic.server.protocols.http_protocol import HttpProtocol
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame as WsFrame
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app import glue
from app.glue import CLOSED, CLOSING, OPEN, Opcode, State
from app.ops.procs import free_port
from app.realtime.connection import Connection, Frame
from app.realtime.inbox import Inbox

VERSIONS = f"sanic {sanic.__version__}, websockets {websockets.__version__}"


def _impl() -> Any:
    from sanic.server.websockets.impl import WebsocketImplProtocol  # H2

    return WebsocketImplProtocol(ServerProtocol())


def _slots(cls: type) -> set[str]:
    return {s for c in cls.__mro__ for s in getattr(c, "__slots__", ())}


def _w1() -> None:
    assert {s.name for s in State} >= {"OPEN", "CLOSING", "CLOSED"}
    assert (OPEN, CLOSING, CLOSED) == (State.OPEN, State.CLOSING, State.CLOSED)
    assert {o.name for o in Opcode} >= {"TEXT", "BINARY", "CONT", "PING", "PONG", "CLOSE"}


def _w2() -> None:
    # A real sans-I/O parse: a client's masked, fragmented text message and a ping.
    client = ClientProtocol(parse_uri("ws://x/ws"), state=State.OPEN)
    server = ServerProtocol(state=State.OPEN)
    client.send_text(b"he", fin=False)
    client.send_continuation(b"llo", fin=True)
    client.send_ping(b"p")
    server.receive_data(b"".join(client.data_to_send()))
    events = server.events_received()
    assert [(e.opcode, e.data, e.fin) for e in events] == [
        (Opcode.TEXT, b"he", False), (Opcode.CONT, b"llo", True), (Opcode.PING, b"p", True)]
    replies = server.data_to_send()  # the protocol answers the ping itself
    assert isinstance(replies, list) and replies and replies[0][:1] == b"\x8a"
    assert server.state is State.OPEN


def _w3() -> None:
    assert {f.name for f in dataclasses.fields(WsFrame)} >= {"opcode", "data", "fin"}


def _s1_to_s10() -> None:
    ws = _impl()
    assert isinstance(ws.ws_proto, ServerProtocol), "S1 ws.ws_proto"
    assert hasattr(ws, "io_proto"), "S2 ws.io_proto"
    assert isinstance(ws.conn_mutex, asyncio.Lock), "S4 ws.conn_mutex"
    assert ws.assembler is not None and hasattr(ws, "recv_cancel"), "S6/S7 ws.assembler, ws.recv_cancel"
    assert isinstance(ws.pings, dict) and inspect.iscoroutinefunction(ws.process_pong), "S8 ws.pings, process_pong"
    assert inspect.iscoroutinefunction(ws.send_data), "S9 ws.send_data"
    assert list(inspect.signature(ws.fail_connection).parameters)[:2] == ["code", "reason"], "S10 fail_connection"
    for name in ("data_received", "process_events"):  # S5: instance attributes must shadow them
        marker = object()
        setattr(ws, name, marker)
        assert getattr(ws, name) is marker, f"S5 ws.{name} cannot be taken over"
    missing = [a for a in glue.WS_ATTRS if not hasattr(_impl(), a)]
    assert not missing, f"WebsocketImplProtocol lost {missing}"


def _s2_s3() -> None:
    assert {"transport", "_can_write"} <= _slots(SanicProtocol), "S2/S3 SanicProtocol.transport, ._can_write"
    assert inspect.iscoroutinefunction(SanicProtocol.send), "S2 io_proto.send"
    assert "_can_write.clear()" in inspect.getsource(SanicProtocol.pause_writing), "S3 pause_writing"


def _h1() -> None:
    assert {"request_body", "expecting_continue", "request_max_size", "keep_alive", "protocol"} <= _slots(Http)
    assert "request_max_size" in _slots(HttpProtocol)


def _r1_to_r4_s11() -> None:
    from sanic.server.protocols.websocket_protocol import WebSocketProtocol

    assert {"head", "headers", "parsed_args", "parsed_not_grouped_args", "stream", "raw_url",
            "_parsed_url"} <= _slots(Request), "R1 Request"
    assert "_parsed_url" in inspect.getsource(Request.path.fget), "R1 Request.path"
    assert "url" in _slots(Http), "R1 Http.url"
    assert {"websocket_url"} <= _slots(WebSocketProtocol) and "access_log" in _slots(HttpProtocol), "R2"
    assert "_callback_check_timeouts" in _slots(HttpProtocol), "R3 HttpProtocol._callback_check_timeouts"
    assert "return" in inspect.getsource(HttpProtocol.check_timeouts).split("upgrade_websocket", 1)[1][:200], \
        "R3 check_timeouts no longer stops for an upgraded connection"
    assert {"_data_received", "_can_write"} <= _slots(SanicProtocol), "R4 SanicProtocol events"
    ev = asyncio.Event()
    assert isinstance(ev._waiters, collections.deque), "R4 asyncio.Event._waiters"
    src = inspect.getsource(asyncio.Event)
    uses = {m for m in ("append(", "remove(", "popleft(", "appendleft(", "rotate(") if f"_waiters.{m}" in src}
    assert uses <= {"append(", "remove("}, f"R4 asyncio.Event now calls {uses} on its waiters"
    ws = _impl()
    assert isinstance(ws.recv_lock, asyncio.Lock) and isinstance(ws.process_event_mutex, asyncio.Lock), "S11"


CHECKS: dict[str, Callable[[], None]] = {
    "W1 websockets State and Opcode": _w1,
    "W2 websockets sans-I/O receive_data/data_to_send/events_received/state": _w2,
    "W3 websockets Frame.opcode/data/fin": _w3,
    "S1-S10 Sanic WebsocketImplProtocol attributes": _s1_to_s10,
    "S2/S3 Sanic SanicProtocol transport, send, _can_write": _s2_s3,
    "H1 Sanic Http stream body-size attributes": _h1,
    "R1-R4, S11 what release_handshake empties": _r1_to_r4_s11,
}


@pytest.mark.parametrize("internal", list(CHECKS))
def test_each_internal_the_glue_relies_on_is_there(internal: str) -> None:
    try:
        CHECKS[internal]()
    except Exception as exc:  # noqa: BLE001 - turned into one loud failure naming the internal
        pytest.fail(f"app/glue.py relies on {internal}, which {VERSIONS} changed: {exc!r}", pytrace=False)


# -- round trips through a served app --------------------------------------------------


class CountingInbox(Inbox):
    """The Inbox, counting the chunks Sanic hands it directly (S5)."""

    chunks = 0

    def data_received(self, data: bytes) -> None:
        self.chunks += 1
        super().data_received(data)


def _app(seen: dict[str, Any]) -> Sanic:
    app = Sanic(f"glue_{uuid.uuid4().hex[:8]}")
    app.config.REQUEST_MAX_SIZE = 1024
    app.config.TOUCHUP = False  # Sanic rewrites its Http class once per process; a second app would redo it

    @app.signal("websocket.handler.before")
    async def take_over(request: Request, websocket: Any) -> None:
        request.ctx.inbox = CountingInbox(websocket)

    @app.websocket("/ws")
    async def echo(request: Request, ws: Any) -> None:
        inbox: CountingInbox = request.ctx.inbox
        seen["inbox"] = inbox
        sock = inbox.sock
        conn = Connection(ws, "u", sock=sock)
        inbox.conn = conn
        io = ws.io_proto
        seen["can_write_is_event"] = isinstance(io._can_write, asyncio.Event)  # S3 on a live connection
        glue.release_handshake(request, ws)  # everything below runs on a released connection
        seen["released"] = (request.head, request.url.split("/", 3)[-1], len(request.headers), request.stream.url,
                            io.websocket_url,
                            io._callback_check_timeouts, type(io._can_write._waiters), ws.recv_lock)
        conn.start()
        try:
            while True:
                msg = await asyncio.wait_for(inbox.recv(), 10)
                if msg == "beat":
                    conn.heartbeat()  # S2: the ping written straight to the transport
                    conn.push(Frame(f"beat:{conn.ping_out}"))
                elif msg == "check":
                    conn.push(Frame(f"check:{conn.ping_out}"))  # the pong cleared it (W2, S5)
                elif msg == "queued":
                    await sock.write(Frame("queued:ok").data + Frame("queued:2").data)  # S2, S4
                elif msg == "pause":
                    paused = sock.pause_reading()
                    sock.resume_reading()
                    conn.push(Frame(f"pause:{paused}"))
                elif msg == "fail":
                    sock.fail(1011, "asked to")  # S10
                else:
                    conn.push(Frame(f"echo:{msg}"))  # RawSocket.write_now (S2, S3, S4)
        except asyncio.CancelledError:
            seen["read_ended_by_close"] = True  # S7: Sanic's close path cancelled our read
            raise
        except asyncio.TimeoutError:
            seen["read_timed_out"] = True

    @app.post("/refuse", stream=True)
    async def refuse(request: Request) -> HTTPResponse:
        glue.drain_refused_body(request, 1 << 20)  # H1
        seen["drain_cap"] = request.stream.request_max_size  # type: ignore[union-attr]
        return text("no", status=413)

    return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, dict[str, Any]]]:
    seen: dict[str, Any] = {}
    port = free_port()
    server = await _app(seen).create_server(host="127.0.0.1", port=port, return_asyncio_server=True,
                                            access_log=False)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield port, seen
    finally:
        await server.before_stop()
        server.close()
        await server.wait_closed()
        await server.after_stop()


async def _ask(c: Any, msg: str) -> str:
    await c.send(msg)
    try:
        return await asyncio.wait_for(c.recv(), 5)
    except asyncio.TimeoutError:
        pytest.fail(f"no answer to {msg!r}: Sanic no longer hands received bytes to the Inbox "
                    f"(S5) or RawSocket no longer writes ({VERSIONS})", pytrace=False)


async def test_frames_round_trip_through_the_inbox_and_the_raw_writes(served: tuple[int, dict[str, Any]]) -> None:
    port, seen = served
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token=secret") as c:
        assert await _ask(c, "hi") == "echo:hi"
        assert await _ask(c, "x" * 70_000) == "echo:" + "x" * 70_000  # 64-bit length header
        assert await _ask(c, "queued") == "queued:ok" and await c.recv() == "queued:2"
        assert await _ask(c, "beat") == "beat:True"  # the client answered our ping...
        assert await _ask(c, "check") == "check:False"  # ...and the Inbox saw the pong
        assert await _ask(c, "pause") == "pause:True"
        assert await _ask(c, "still there") == "echo:still there"  # reading resumed
        await c.send([b"frag", b"mented"])  # a fragmented binary message
        assert await asyncio.wait_for(c.recv(), 5) == "echo:b'fragmented'"
    assert c.close_code == 1000  # the close reply went out (S9)
    for _ in range(50):
        if "read_ended_by_close" in seen:
            break
        await asyncio.sleep(0.02)
    assert seen.get("read_ended_by_close"), f"S7 ws.recv_cancel: a closing client no longer ends the read {seen}"
    assert seen["can_write_is_event"], "S3 io_proto._can_write is no longer an asyncio.Event"
    assert seen["released"] == (b"", "ws", 0, None, None, None, list, None), f"R1-R4, S11: {seen['released']}"
    assert seen["inbox"].chunks >= 8, "S5 Sanic no longer calls ws.data_received: frames take its slow path"


async def test_fail_closes_at_once_with_the_code(served: tuple[int, dict[str, Any]]) -> None:
    port, _ = served
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as c:
        await c.send("fail")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(c.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011, "S10 fail_connection"


async def test_a_refused_body_is_drained_and_the_connection_closed(served: tuple[int, dict[str, Any]]) -> None:
    port, seen = served
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        resp = await client.post("/refuse", content=b"y" * 200_000)  # past REQUEST_MAX_SIZE: drained
    assert resp.status_code == 413 and resp.text == "no"
    assert resp.headers.get("connection") == "close", "H1 stream.keep_alive no longer closes after the answer"
    assert seen["drain_cap"] == 1 << 20, "H1 stream.request_max_size"
