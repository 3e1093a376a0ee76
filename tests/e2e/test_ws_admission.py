"""Connect admission and the cached connect path against real server processes: a storm of
connects beyond WS_ADMIT_CONCURRENCY + WS_ADMIT_QUEUE is told 1013 retry_after_ms=<n>, every
client that honours it gets in and loses nothing; a membership change shows in the next hello."""

from __future__ import annotations

import asyncio
import random
import re
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.factories import TestUser, make_room, make_user
from tests.support import OwnServers, ServerProc
from tests.wsclient import WS

pytestmark = pytest.mark.redis_engines  # single-node Redis and a Redis Cluster (tests/conftest.py)

RETRY = re.compile(r"^retry_after_ms=(\d+)$")
RETRY_MS = 200


@pytest.fixture
def tight(own_server: OwnServers) -> ServerProc:
    return own_server(name="admit", WS_ADMIT_CONCURRENCY="1", WS_ADMIT_QUEUE="1", WS_ADMIT_RETRY_MS=str(RETRY_MS))


async def test_a_storm_beyond_the_queue_is_told_to_retry_and_every_client_gets_in(tight: ServerProc) -> None:
    with httpx.Client(base_url=tight.base_url, timeout=20.0) as api:
        users = [make_user(api) for _ in range(4)]
        room = make_room(api, users[0], member_ids=[u.id for u in users[1:]])
    n = 40
    refusals: list[int] = []

    async def client(user: TestUser) -> WS:
        for _ in range(100):
            try:
                return await WS.open(tight.ws_url, user.access_token)
            except ConnectionClosed as exc:  # closed before the hello
                assert exc.rcvd is not None and exc.rcvd.code == 1013, exc
                m = RETRY.match(exc.rcvd.reason)
                assert m, exc.rcvd.reason
                wait = int(m.group(1))
                assert RETRY_MS <= wait <= 2 * RETRY_MS  # the base plus jitter up to as much again
                refusals.append(wait)
                await asyncio.sleep((wait + random.uniform(0, wait)) / 1000)  # as the web client does
        raise AssertionError("never admitted")

    conns = await asyncio.gather(*(client(users[i % len(users)]) for i in range(n)))
    try:
        assert refusals, "40 simultaneous connects past 1 slot + 1 waiting: some must be told to retry"
        assert len(set(refusals)) > 1  # jittered, not one instant for everyone
        for ws in conns:
            assert [r["room_id"] for r in ws.hello["rooms"]] == [room["id"]]
        # None lost: every admitted connection is live in the room.
        body = f"after the storm {uuid.uuid4().hex[:6]}"
        await conns[0].send({"type": "send", "room_id": room["id"], "body": body, "client_id": "storm-1"})
        for ws in conns:
            got = await ws.recv_until(lambda f: f.get("type") in ("message", "ack")
                                      and (f.get("message") or f).get("body") == body)
            assert got
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))


async def test_membership_changes_show_in_the_next_hello(server: ServerProc, api: httpx.Client) -> None:
    owner, user = make_user(api), make_user(api)
    kept = make_room(api, owner, is_private=False)
    other = make_room(api, owner, is_private=False)

    async def hello_rooms() -> list[str]:
        ws = await WS.open(server.ws_url, user.access_token)
        await ws.close()
        return [r["room_id"] for r in ws.hello["rooms"]]

    assert await hello_rooms() == []
    assert await hello_rooms() == []  # from the cached (empty) list
    assert api.post(f"/rooms/{kept['id']}/join", headers=user.headers).status_code == 200
    assert api.post(f"/rooms/{other['id']}/join", headers=user.headers).status_code == 200
    assert await hello_rooms() == [kept["id"], other["id"]]
    assert await hello_rooms() == [kept["id"], other["id"]]
    kick = api.delete(f"/rooms/{other['id']}/members/{user.id}", headers=owner.headers)
    assert kick.status_code == 204, kick.text
    assert await hello_rooms() == [kept["id"]]
    assert api.delete(f"/rooms/{kept['id']}", headers=owner.headers).status_code == 204
    assert await hello_rooms() == []


async def test_a_kick_racing_connects_never_leaves_the_room_in_a_later_hello(server: ServerProc,
                                                                            api: httpx.Client) -> None:
    """Connects loading the list while the kick commits: whatever each of them saw, the first
    connect after the kick's answer does not list the room (the compare-and-set guard)."""
    owner = make_user(api)
    for _ in range(5):
        user = make_user(api)
        room = make_room(api, owner, is_private=False)
        assert api.post(f"/rooms/{room['id']}/join", headers=user.headers).status_code == 200

        async def connect_once() -> None:
            try:
                ws = await WS.open(server.ws_url, user.access_token)
                await ws.close()
            except ConnectionClosed:
                pass

        async def kick() -> None:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=20.0) as client:
                await asyncio.sleep(random.uniform(0, 0.02))
                resp = await client.delete(f"/rooms/{room['id']}/members/{user.id}", headers=owner.headers)
                assert resp.status_code == 204, resp.text

        await asyncio.gather(kick(), *(connect_once() for _ in range(8)))
        ws = await WS.open(server.ws_url, user.access_token)
        await ws.close()
        assert ws.hello["rooms"] == []
