"""A bare in-memory broadcast server: `python -m bench.bare <port>` (the `bare` scenario).

The issue's yardstick ("bare in-memory websockets broadcast") and the generator's
calibration: it speaks the subset of the /ws protocol the realtime load uses (hello,
send -> ack + message to the room's other connections, per-room seq) with nothing
behind it: no Redis, no database, no auth (the token names the room: "<room>:<user>").
If the generator drives this faster than the chat server, the chat server's limit is
the server's; if the generator saturates here, its own limit is known.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}
seqs: dict[str, int] = {}


def now_iso() -> str:
    dt = datetime.now(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


async def handler(ws: ServerConnection) -> None:
    token = parse_qs(urlsplit(ws.request.path if ws.request else "").query).get("token", [""])[0]
    room, _, user = token.partition(":")
    members = rooms.setdefault(room, set())
    members.add(ws)
    await ws.send(orjson.dumps({"type": "hello", "user_id": user, "heartbeat_s": 20,
                                "rooms": [{"room_id": room, "last_seq": seqs.get(room, 0)}]}), text=True)
    try:
        async for raw in ws:
            frame: dict[str, Any] = orjson.loads(raw)
            if frame.get("type") != "send":
                continue
            seq = seqs[room] = seqs.get(room, 0) + 1
            msg = {"id": str(uuid.uuid4()), "room_id": room, "seq": seq, "sender_id": user, "kind": "text",
                   "body": frame.get("body", ""), "file": None, "client_id": frame.get("client_id"),
                   "created_at": now_iso()}
            # Serialised once for every recipient, as the chat server's fan-out does.
            broadcast([m for m in members if m is not ws], orjson.dumps({"type": "message", "message": msg}),
                      text=True)
            await ws.send(orjson.dumps({"type": "ack", "client_id": frame.get("client_id"), "message": msg}),
                          text=True)
    finally:
        members.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        run_loop = uvloop.run
    except ImportError:
        run_loop = asyncio.run
    run_loop(main(int(sys.argv[1])))
