"""Fan-out across real server processes: ordering under concurrency, retries, kicks, several workers.

On single-node Redis and on a Redis Cluster (`redis_engines`, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from app.settings import Settings
from tests.env import TEST_ENV
from tests.factories import make_room, make_user
from tests.support import OwnServers, ServerProc
from tests.wsclient import WS

pytestmark = pytest.mark.redis_engines


@pytest.fixture(scope="module")
def second(own_server: OwnServers) -> ServerProc:
    """A second server process on its own port, sharing the session's database and Redis."""
    return own_server(name="second")


def is_room_msg(room_id: str) -> Any:
    return lambda f: f["type"] in ("message", "ack") and f["message"]["room_id"] == room_id


async def test_a_message_sent_on_one_process_reaches_members_on_the_other(
        server: ServerProc, second: ServerProc, api: httpx.Client) -> None:
    alice, bob = make_user(api), make_user(api)
    room = make_room(api, alice, member_ids=[bob.id])
    a = await WS.open(server.ws_url, alice.access_token)
    b = await WS.open(second.ws_url, bob.access_token)
    ack = await a.request({"type": "send", "room_id": room["id"], "body": "across"}, "ack")
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"] == ack["message"]
    with httpx.Client(base_url=second.base_url, timeout=10) as api_b:
        resp = api_b.post(f"/rooms/{room['id']}/messages", json={"body": "via B"}, headers=bob.headers)
        assert resp.status_code == 201 and resp.json()["seq"] == 2
    assert (await a.recv_until(lambda f: f["type"] == "message"))["message"]["body"] == "via B"
    # a retry on the other process returns the original
    first = await a.request({"type": "send", "room_id": room["id"], "body": "r", "client_id": "x1"}, "ack")
    b2 = await WS.open(second.ws_url, alice.access_token)
    again = await b2.request({"type": "send", "room_id": room["id"], "body": "r", "client_id": "x1"}, "ack")
    assert again["message"] == first["message"]
    for ws in (a, b, b2):
        await ws.close()


async def test_concurrent_senders_on_two_processes_get_gap_free_seqs_delivered_in_order(
        server: ServerProc, second: ServerProc, api: httpx.Client) -> None:
    users = [make_user(api) for _ in range(10)]
    room = make_room(api, users[0], member_ids=[u.id for u in users[1:]])
    per_sender, senders = 8, 50
    total = per_sender * senders
    conns = [await WS.open((server if i % 2 else second).ws_url, users[i % len(users)].access_token)
             for i in range(senders)]
    received: list[list[int]] = [[] for _ in conns]

    async def run(i: int) -> None:
        ws = conns[i]

        async def reader() -> None:
            while len(received[i]) < total:
                frame = await ws.recv(20)
                if is_room_msg(room["id"])(frame):
                    received[i].append(frame["message"]["seq"])

        task = asyncio.create_task(reader())
        for k in range(per_sender):
            await ws.send({"type": "send", "room_id": room["id"], "body": f"{i}:{k}", "client_id": f"{i}-{k}"})
            await asyncio.sleep(random.random() * 0.005)
        await task

    await asyncio.gather(*(run(i) for i in range(senders)))
    for seqs in received:
        assert seqs == list(range(1, total + 1))  # every connection: all N, each once, in seq order
    history = api.get(f"/rooms/{room['id']}/messages", params={"limit": 200}, headers=users[0].headers).json()
    assert [m["seq"] for m in history["items"]] == list(range(total - 199, total + 1))
    for ws in conns:
        await ws.close()


async def test_kicked_member_stops_receiving_at_once(server: ServerProc, second: ServerProc,
                                                     api: httpx.Client) -> None:
    alice, bob, carol = make_user(api), make_user(api), make_user(api)
    room = make_room(api, alice, member_ids=[bob.id, carol.id])
    marker = make_room(api, alice, member_ids=[bob.id])  # bob stays in this one
    a = await WS.open(server.ws_url, alice.access_token)
    b = await WS.open(second.ws_url, bob.access_token)
    c = await WS.open(second.ws_url, carol.access_token)
    await a.request({"type": "send", "room_id": room["id"], "body": "before"}, "ack")
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"]["body"] == "before"
    resp = api.delete(f"/rooms/{room['id']}/members/{bob.id}", headers=alice.headers)
    assert resp.status_code == 204
    assert (await b.recv_until(lambda f: f["type"] == "member_left")) == {
        "type": "member_left", "room_id": room["id"], "user_id": bob.id}
    await a.request({"type": "send", "room_id": room["id"], "body": "after"}, "ack")
    await c.recv_until(lambda f: f["type"] == "message" and f["message"]["body"] == "after")
    # a later event in a room bob is still in reaches him; nothing of the old room came first
    await a.request({"type": "send", "room_id": marker["id"], "body": "marker"}, "ack")
    await b.none_before(lambda f: f["type"] == "message" and f["message"]["room_id"] == marker["id"],
                        lambda f: (f["type"] == "message" and f["message"]["room_id"] == room["id"])
                        or (f["type"] == "typing" and f["room_id"] == room["id"]))
    err = await b.request({"type": "send", "room_id": room["id"], "body": "let me in"}, "ack")
    assert err["type"] == "error" and err["code"] == "not_member"
    for ws in (a, b, c):
        await ws.close()


async def test_deleted_room_is_announced_and_forgotten(server: ServerProc, second: ServerProc,
                                                       api: httpx.Client) -> None:
    alice, bob = make_user(api), make_user(api)
    room = make_room(api, alice, member_ids=[bob.id])
    b = await WS.open(second.ws_url, bob.access_token)
    assert api.delete(f"/rooms/{room['id']}", headers=alice.headers).status_code == 204
    assert await b.recv_until(lambda f: f["type"] == "room_deleted") == {"type": "room_deleted", "room_id": room["id"]}
    err = await b.request({"type": "send", "room_id": room["id"], "body": "hello?"}, "ack")
    assert err["code"] == "room_not_found"
    await b.close()


# -- WORKERS and slow consumers, on their own servers ---------------------------------------------

@pytest.fixture(scope="module")
def two_workers(own_server: OwnServers) -> ServerProc:
    return own_server(workers=2, name="workers2")


@pytest.mark.redis_engines("single")  # Sanic's workers on one port; cross-process fan-out on the cluster: `second`
async def test_workers_2_serves_one_port_with_cross_process_fanout(two_workers: ServerProc) -> None:
    with httpx.Client(base_url=two_workers.base_url, timeout=10) as api:
        alice, bob = make_user(api), make_user(api)
        room = make_room(api, alice, member_ids=[bob.id])
        listeners = [await WS.open(two_workers.ws_url, bob.access_token) for _ in range(6)]
        a = await WS.open(two_workers.ws_url, alice.access_token)
        acks = [await a.request({"type": "send", "room_id": room["id"], "body": f"m{i}"}, "ack") for i in range(5)]
        assert [x["message"]["seq"] for x in acks] == [1, 2, 3, 4, 5]
        for ws in listeners:
            got = [(await ws.recv_until(lambda f: f["type"] == "message"))["message"]["seq"] for _ in range(5)]
            assert got == [1, 2, 3, 4, 5]
        for ws in (*listeners, a):
            await ws.close()


@pytest.fixture(scope="module")
def tiny_outbox(own_server: OwnServers) -> ServerProc:
    return own_server(name="outbox", WS_OUTBOX_FRAMES="20")


@pytest.mark.redis_engines("single")  # a process-local outbox: no Redis in it
async def test_a_client_that_stops_reading_is_dropped_without_stalling_others(tiny_outbox: ServerProc) -> None:
    with httpx.Client(base_url=tiny_outbox.base_url, timeout=10) as api:
        alice, bob, carol = make_user(api), make_user(api), make_user(api)
        room = make_room(api, alice, member_ids=[bob.id, carol.id])
    a = await WS.open(tiny_outbox.ws_url, alice.access_token)
    # bob never reads: his client stops taking data off the socket once a few frames are buffered
    stuck = await WS.open(tiny_outbox.ws_url, bob.access_token, max_queue=1)
    c = await WS.open(tiny_outbox.ws_url, carol.access_token)
    body = "x" * 4000
    total = 3000

    async def carol_reads() -> int:
        last = 0
        while last < total:
            frame = await c.recv(30)
            if frame["type"] == "message":
                assert frame["message"]["seq"] == last + 1
                last = frame["message"]["seq"]
        return last

    reader = asyncio.create_task(carol_reads())
    for i in range(total):
        await a.send({"type": "send", "room_id": room["id"], "body": body})
        if i % 100 == 99:
            await a.recv_until(lambda f: f["type"] == "ack" and f["message"]["seq"] == i + 1, 30)
    assert await reader == total
    with pytest.raises(ConnectionClosed):
        while True:
            await stuck.recv(5)
    # 1013 when the close frame gets through; behind a full socket buffer the client only sees
    # the TCP connection end (1006), so the server's log is the proof it dropped bob for being slow
    assert any("closing slow connection" in line and f"of user {bob.id}" in line
               for line in tiny_outbox.output().splitlines()), tiny_outbox.log_tail(20)
    assert stuck.conn.close_code in (1013, 1006)
    await a.close()
    await c.close()


@pytest.fixture(scope="module")
def own_prefix_server(own_server: OwnServers, settings: Settings) -> ServerProc:
    """A server with a Redis prefix of its own, so its subscriber can be told from the others."""
    return own_server(name="fanout", REDIS_PREFIX=f"{settings.redis_prefix}-fo")


async def test_fanout_resubscribes_after_losing_its_redis_connection(own_prefix_server: ServerProc,
                                                                     redis_node: Any, settings: Settings) -> None:
    srv = own_prefix_server
    redis = redis_node  # the fan-out's subscription is a plain connection to REDIS_URL (one node)
    name = f"{settings.redis_prefix}-fo:fanout:"

    async def subscriber_ids() -> set[str]:
        return {c["id"] for c in await redis.client_list() if c.get("name", "").startswith(name)}

    with httpx.Client(base_url=srv.base_url, timeout=10) as api:
        alice, bob = make_user(api), make_user(api)
        room = make_room(api, alice, member_ids=[bob.id])
    b = await WS.open(srv.ws_url, bob.access_token)
    a = await WS.open(srv.ws_url, alice.access_token)
    before = await subscriber_ids()
    assert len(before) == 1
    for cid in before:
        await redis.client_kill_filter(_id=cid)
    # Events published while the process is resubscribing are lost (clients resync by seq);
    # keep sending until one arrives, then everything after it must arrive, in order.
    for attempt in range(100):
        ack = await a.request({"type": "send", "room_id": room["id"], "body": f"probe {attempt}"}, "ack")
        try:
            got = await b.recv_until(lambda f: f["type"] == "message", timeout=0.3)
        except asyncio.TimeoutError:
            continue
        assert got["message"]["seq"] <= ack["message"]["seq"]
        break
    else:
        raise AssertionError("the fan-out did not resubscribe")
    assert await subscriber_ids() and not await subscriber_ids() & before
    last = await a.request({"type": "send", "room_id": room["id"], "body": "after the blip"}, "ack")
    got = await b.recv_until(lambda f: f["type"] == "message" and f["message"]["body"] == "after the blip")
    assert got["message"] == last["message"]
    missed = await b.request({"type": "sync", "room_id": room["id"], "after_seq": 0, "limit": 200}, "sync")
    assert [m["seq"] for m in missed["messages"]] == list(range(1, last["message"]["seq"] + 1))
    await a.close()
    await b.close()


async def test_a_member_added_over_http_starts_receiving_on_the_other_process(
        server: ServerProc, second: ServerProc, api: httpx.Client) -> None:
    alice, bob = make_user(api), make_user(api)
    room = make_room(api, alice, is_private=True)
    b = await WS.open(second.ws_url, bob.access_token)
    a = await WS.open(server.ws_url, alice.access_token)
    await a.request({"type": "send", "room_id": room["id"], "body": "private"}, "ack")
    assert api.post(f"/rooms/{room['id']}/members", json={"user_id": bob.id}, headers=alice.headers).status_code == 201
    # member_joined is fanned out after "private": that message must not have reached bob first
    joined = await b.none_before(lambda f: f["type"] == "member_joined", lambda f: f["type"] == "message")
    assert joined["membership"]["user_id"] == bob.id
    ack = await a.request({"type": "send", "room_id": room["id"], "body": "welcome in"}, "ack")
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"] == ack["message"]
    await b.send({"type": "typing", "room_id": room["id"]})
    await b.send({"type": "typing", "room_id": room["id"]})  # within the interval: not repeated
    assert (await a.recv_until(lambda f: f["type"] == "typing"))["user_id"] == bob.id
    # bob's next message is fanned out after any repeated typing would have been
    await b.request({"type": "send", "room_id": room["id"], "body": "after typing"}, "ack")
    await a.none_before(lambda f: f["type"] == "message" and f["message"]["body"] == "after typing",
                        lambda f: f["type"] == "typing")
    await a.close()
    await b.close()


async def test_a_subscription_gap_tells_every_client_to_resync_and_rereads_rooms(
        own_prefix_server: ServerProc, redis_node: Any, settings: Settings) -> None:
    """Kill only this server's own subscription connection (found by its client name), never
    anyone else's: its clients get resync, and a kick whose event the gap swallowed is repaired."""
    import asyncpg

    srv = own_prefix_server
    redis = redis_node  # the fan-out's subscription is a plain connection to REDIS_URL (one node)
    name = f"{settings.redis_prefix}-fo:fanout:"
    with httpx.Client(base_url=srv.base_url, timeout=10) as api:
        alice, bob = make_user(api), make_user(api)
        room = make_room(api, alice, member_ids=[bob.id])
        canary = make_room(api, alice, member_ids=[bob.id])
    a = await WS.open(srv.ws_url, alice.access_token)
    b = await WS.open(srv.ws_url, bob.access_token)
    # bob leaves the room behind the services' back (a kick whose event and Redis update were
    # lost): only PostgreSQL knows, so until the gap's re-read bob's socket is still attached.
    conn = await asyncpg.connect(TEST_ENV["DATABASE_URL"])
    try:
        await conn.execute("DELETE FROM memberships WHERE room_id = $1 AND user_id = $2", room["id"], bob.id)
    finally:
        await conn.close()
    await a.request({"type": "send", "room_id": room["id"], "body": "before"}, "ack")
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"]["body"] == "before"  # still attached

    ids = [c["id"] for c in await redis.client_list() if c.get("name", "").startswith(name)]
    assert len(ids) == 1, ids  # exactly our server's one subscription
    await redis.client_kill_filter(_id=ids[0])
    for ws in (a, b):
        got = await ws.recv_until(lambda f: f["type"] == "resync", timeout=10)
        assert got == {"type": "resync", "room_id": None, "reason": "fanout_gap"}
    # After the re-read: a message to `room`, then one to `canary`, published in that order on one
    # channel; bob receives the canary one without the first: he no longer reads `room`.
    for attempt in range(50):
        await a.request({"type": "send", "room_id": room["id"], "body": f"after {attempt}"}, "ack")
        await a.request({"type": "send", "room_id": canary["id"], "body": f"canary {attempt}"}, "ack")
        got = await b.recv_until(lambda f: f["type"] == "message", timeout=5)
        if got["message"]["room_id"] == canary["id"]:
            break
        await b.recv_until(lambda f: f["type"] == "message" and f["message"]["room_id"] == canary["id"])
        await asyncio.sleep(0.1)  # the re-read runs in the background: give it a moment
    else:
        raise AssertionError("bob kept receiving the room he left after the gap")
    print(f"kicked user stopped reading after {attempt} probe(s)")
    await a.close()
    await b.close()
