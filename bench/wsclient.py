"""Lean clients for the load generator: WebSocket on a bare asyncio Protocol, and a
minimal keep-alive HTTP/1.1 GET client.

The high-level `websockets` client spends a task, a queue and several awaits per
frame; at tens of thousands of deliveries a second that would saturate the
generator long before the server. Here the `websockets` sans-I/O protocol makes
and checks the handshake and frames what we send (masking included), and received
frames (unmasked, uncompressed: no extension is offered) are cut out of the byte
stream here, one callback per text frame: about half the cost of the generic parser.

The tests' frame-level client (tests/wsclient.RawWS) is this same connection with
`answer_pings=False` when a test needs a client that stops answering the heartbeat: one
handshake and one frame parser for the bench and the tests, no copy in a test module.
"""

from __future__ import annotations

import asyncio
from typing import Callable
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

MAX_HANDSHAKE = 64 * 1024
OnText = Callable[["WSConn", "bytes | memoryview"], None]


class WSConn(asyncio.Protocol):
    """One WebSocket connection; `on_text(conn, payload)` is called for every text frame."""

    def __init__(self, url: str, on_text: OnText, index: int = 0, answer_pings: bool = True) -> None:
        self.url = url
        self.index = index
        self.on_text = on_text
        self.answer_pings = answer_pings  # False: a client that stops answering the heartbeat (tests)
        self.pings = 0  # pings received from the server
        self.proto = ClientProtocol(parse_uri(url))
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.close_code: int | None = None
        self.refused_status = 0  # the HTTP status of a refused handshake (503, 429, ...)
        self.retry_after_s: float | None = None  # its Retry-After header, if any
        self.close_reason = ""  # the server's close frame reason (e.g. "retry_after_ms=<n>" with 1013)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # done when the socket is gone
        self.last_seq: dict[str, int] = {}  # room_id -> last seq received (order/duplicate check)
        self._buf = bytearray()  # the handshake so far, then an incomplete frame
        self._fragments: list[bytes] = []
        self._open = False  # handshake done: frames from now on

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        # (uvloop keeps the bound method it saw first, so this cannot be swapped out)
        if self._open:
            self.frames_received(data)
        else:
            self._handshake_received(data)

    def _handshake_received(self, data: bytes) -> None:
        """Until the handshake is done: collect the response head, let the protocol check it."""
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HANDSHAKE:
                self._refuse("handshake response too long")
            return
        head, rest = bytes(self._buf[:end + 4]), bytes(self._buf[end + 4:])
        self._buf.clear()
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
        if status != b"101":  # refused (401, 403, ...): the body does not matter here
            self.refused_status = int(status) if status.isdigit() else 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"retry-after" and value.strip().isdigit():
                    self.retry_after_s = float(value.strip())
            self._refuse(f"handshake refused: HTTP {status.decode(errors='replace')}")
            return
        self.proto.receive_data(head)  # checks Upgrade, Connection and Sec-WebSocket-Accept
        response = next((e for e in self.proto.events_received() if isinstance(e, Response)), None)
        if response is None or self.proto.state is not State.OPEN:
            self._refuse(f"handshake refused: {self.proto.handshake_exc}")
            return
        self.opened.set_result(response)
        self._open = True
        if rest:
            self.frames_received(rest)

    def frames_received(self, data: bytes) -> None:
        """Cut complete frames out of the stream; keep an incomplete one for the next read."""
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        view = memoryview(data)
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            if b1 & 0x80 or b0 & 0x70:  # masked, or RSV bits without an extension: protocol error
                self._fail(1002)
                return
            self._frame(b0, view[pos + head:end])
            pos = end
        if pos < n:
            self._buf += view[pos:]

    def _frame(self, b0: int, payload: memoryview) -> None:
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode == 0x1 and fin and not self._fragments:
            self.on_text(self, payload)
        elif opcode in (0x0, 0x1):  # a fragmented text message: assemble it
            self._fragments.append(bytes(payload))
            if fin:
                whole, self._fragments = b"".join(self._fragments), []
                self.on_text(self, whole)
        elif opcode == 0x9:  # ping: the server's heartbeat
            self.pings += 1
            if self.answer_pings:
                self.proto.send_pong(bytes(payload))
                self._flush()
        elif opcode == 0x8:  # close: note the code, answer, drop the socket
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = bytes(payload[2:]).decode("utf-8", "replace")
            self._fail(1000)

    def _refuse(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))

    # -- sending -----------------------------------------------------------
    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def send_text(self, text: bytes) -> bool:
        """Queue one text frame; False if the connection is gone."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.proto.send_text(text)
        self._flush()
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                if self.proto.state is State.OPEN:
                    self.proto.send_close(1000)
                    self._flush()
            except Exception:  # noqa: BLE001 - already closing: just drop the socket
                pass
            self.transport.close()


async def open_ws(url: str, on_text: OnText, index: int = 0, timeout: float = 15.0,
                  answer_pings: bool = True) -> WSConn:
    """Connect and complete the handshake (not waiting for the server's hello frame)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _transport, conn = await asyncio.wait_for(
        loop.create_connection(lambda: WSConn(url, on_text, index, answer_pings), parts.hostname,
                               parts.port or 80),
        timeout)
    await asyncio.wait_for(conn.opened, timeout)
    return conn


class HttpConn:
    """A keep-alive HTTP/1.1 connection for GET requests with Content-Length responses."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\n".encode() + self.head)
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            low = name.strip().lower()
            if low == b"content-length":
                length = int(value)
            elif low == b"connection" and value.strip().lower() == b"close":
                close = True
            elif low == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported by the bench client")
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
