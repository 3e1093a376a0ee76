"""The server's heartbeat: a client that answers pings stays connected (one that does not is
closed with 1011: tests/e2e/test_ws.py)."""

from __future__ import annotations

import asyncio
import json
import os

import httpx

from tests.factories import TestUser, make_user
from tests.support import ServerProc


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (short payloads only)."""
    mask = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return head[0] & 0x0F, await reader.readexactly(n)


async def test_a_client_that_answers_pings_stays_connected(server: ServerProc, api: httpx.Client) -> None:
    user: TestUser = make_user(api)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write((f"GET /ws?token={user.access_token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    opcode, data = await asyncio.wait_for(_read_frame(reader), 10)
    assert opcode == 0x1 and json.loads(data)["type"] == "hello"
    heartbeat_s = json.loads(data)["heartbeat_s"]
    pings = 0
    try:
        while pings < 3:  # three pings answered: well past the point where a silent client is closed
            opcode, data = await asyncio.wait_for(_read_frame(reader), heartbeat_s * 3)
            assert opcode == 0x9, f"unexpected frame {opcode:#x} {data!r}"
            pings += 1
            writer.write(_client_frame(0xA, data))
        writer.write(_client_frame(0x1, b'{"type":"ping"}'))
        opcode, data = await asyncio.wait_for(_read_frame(reader), 10)
        while opcode == 0x9:  # a ping may come first
            writer.write(_client_frame(0xA, data))
            opcode, data = await asyncio.wait_for(_read_frame(reader), 10)
        assert (opcode, json.loads(data)) == (0x1, {"type": "pong"})
    finally:
        writer.close()
