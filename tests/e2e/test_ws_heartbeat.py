"""The server's heartbeat: a client that answers pings stays connected (one that does not is
closed with 1011: tests/e2e/test_ws.py)."""

from __future__ import annotations

import httpx

from tests.factories import TestUser, make_user
from tests.support import ServerProc
from tests.wsclient import RawWS


async def test_a_client_that_answers_pings_stays_connected(server: ServerProc, api: httpx.Client) -> None:
    user: TestUser = make_user(api)
    ws = await RawWS.open(server.ws_url, user.access_token)  # answers every ping with a pong
    try:
        hello = await ws.recv()
        assert hello["type"] == "hello"
        # Three pings answered: well past the point where a silent client is closed.
        await ws.wait_pings(3, timeout=hello["heartbeat_s"] * 3 * 3)
        assert ws.frames.empty(), f"unexpected frame between pings: {ws.frames.get_nowait()}"
        ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}
    finally:
        ws.close()
