"""Lean clients for the load generator: WebSocket over the `websockets` sans-I/O protocol
layer on a bare asyncio Protocol, and a minimal keep-alive HTTP/1.1 GET client.

The high-level `websockets` client spends a task, a queue and several awaits per
frame; at tens of thousands of deliveries a second that would saturate the
generator long before the server. Here a received frame costs one
`receive_data` call and one callback (a few microseconds).
"""

from __future__ import annotations

import asyncio
from typing import Callable
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

# Server frames are small JSON; the contract's limit is 64 KiB, a sync page can be larger.
MAX_FRAME = 4 * 1024 * 1024


class WSConn(asyncio.Protocol):
    """One WebSocket connection; `on_text(conn, data)` is called for every text frame."""

    def __init__(self, url: str, on_text: Callable[["WSConn", bytes], None], index: int = 0) -> None:
        self.url = url
        self.index = index
        self.on_text = on_text
        self.proto = ClientProtocol(parse_uri(url), max_size=MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.close_code: int | None = None
        self.last_seq: dict[str, int] = {}  # room_id -> last seq received (order/duplicate check)

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.on_text(self, event.data)
                elif event.opcode is Opcode.CLOSE:
                    self.close_code = proto.close_code
            elif isinstance(event, Response) and not self.opened.done():
                if proto.state is State.OPEN:
                    self.opened.set_result(event)
                else:
                    self.opened.set_exception(ConnectionError(
                        f"handshake refused: HTTP {event.status_code} {proto.handshake_exc or ''}".strip()))
        self._flush()  # pongs, close replies

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = self.proto.close_code
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
                self.proto.send_close(1000)
                self._flush()
            except Exception:  # noqa: BLE001 - already closing: just drop the socket
                pass
            self.transport.close()


async def open_ws(url: str, on_text: Callable[[WSConn, bytes], None], index: int = 0,
                  timeout: float = 15.0) -> WSConn:
    """Connect and complete the handshake (not waiting for the server's hello frame)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _transport, conn = await asyncio.wait_for(
        loop.create_connection(lambda: WSConn(url, on_text, index), parts.hostname, parts.port or 80),
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
