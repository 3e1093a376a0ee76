"""FANOUT_CHANNELS=rooms (app/realtime/fanout.py): a process subscribes only to what its own
connections need, lets go of it when they leave, and a join followed at once by a send
delivers the message once.

Each test runs on single-node Redis and on the Redis Cluster (`redis_engines`), with a server
of its own under its own Redis prefix, so the subscriber connection seen in CLIENT LIST and the
channels seen in PUBSUB CHANNELS are that server's alone. (The [cluster] engine runs every
other real-time test in this mode too: tests/env.py.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Callable, Iterator

import httpx
import pytest
from redis import Redis as SyncRedis

from tests.env import Engine, Isolated, isolated_env
from tests.factories import make_room, make_user
from tests.support import OwnServers, ServerProc
from tests.wsclient import WS

pytestmark = pytest.mark.redis_engines


@pytest.fixture(scope="module")
def iso(redis_engine: Engine) -> Isolated:
    return isolated_env("fo", {**redis_engine.env, "FANOUT_CHANNELS": "rooms"})


@pytest.fixture(scope="module")
def srv(own_server: OwnServers, iso: Isolated) -> ServerProc:
    return own_server(env=iso.env, name="fanout-rooms")


@pytest.fixture(scope="module")
def node(iso: Isolated) -> Iterator[SyncRedis]:
    """The Redis node REDIS_URL names: the server's subscriber connection lives there (on a
    cluster PUBSUB CHANNELS is per node: that node's subscribers)."""
    client = SyncRedis.from_url(iso.env["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def http(srv: ServerProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, timeout=10) as client:
        yield client


def channels(node: SyncRedis, iso: Isolated) -> set[str]:
    return set(node.execute_command("PUBSUB", "CHANNELS", f"{iso.prefix}:*"))


def subscriber(node: SyncRedis, iso: Isolated) -> dict[str, Any]:
    """The server's subscriber connection in CLIENT LIST (named by fanout.subscriber_name)."""
    mine = [c for c in node.client_list() if c.get("name", "").startswith(f"{iso.prefix}:fanout:")]
    assert len(mine) == 1, mine
    return mine[0]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_a_process_subscribes_only_to_its_connections_channels_and_drops_them_when_they_leave(
        srv: ServerProc, http: httpx.Client, node: SyncRedis, iso: Isolated) -> None:
    alice, bob, carol = make_user(http), make_user(http), make_user(http)
    r1 = make_room(http, alice, member_ids=[bob.id])
    r2 = make_room(http, alice)
    r3 = make_room(http, carol)  # nobody of it is connected here
    k = iso.keys
    a = await WS.open(srv.ws_url, alice.access_token)
    assert a.hello["user_id"] == alice.id
    # The hello is sent only once these are confirmed: they are there now, and nothing else.
    assert channels(node, iso) == {k.user_channel(alice.id), k.room_channel(r1["id"]), k.room_channel(r2["id"])}
    assert subscriber(node, iso)["sub"] == "3"
    assert k.room_channel(r3["id"]) not in channels(node, iso)

    b = await WS.open(srv.ws_url, bob.access_token)
    assert channels(node, iso) == {k.user_channel(alice.id), k.user_channel(bob.id),
                                   k.room_channel(r1["id"]), k.room_channel(r2["id"])}
    # Delivery works on these channels: a message in r1 reaches bob, the ack alice.
    ack = await a.request({"type": "send", "room_id": r1["id"], "body": "hi"}, "ack")
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"] == ack["message"]

    # Alice leaves r2, its last local connection: the channel goes (lazily), the others stay.
    await a.request({"type": "leave", "room_id": r2["id"]}, "left")
    await eventually(lambda: k.room_channel(r2["id"]) not in channels(node, iso))
    assert channels(node, iso) == {k.user_channel(alice.id), k.user_channel(bob.id), k.room_channel(r1["id"])}

    # Bob closes: his user channel goes, r1 stays for alice; alice closes: nothing is left.
    await b.close()
    await eventually(lambda: channels(node, iso) == {k.user_channel(alice.id), k.room_channel(r1["id"])})
    await a.close()
    await eventually(lambda: channels(node, iso) == set())
    assert subscriber(node, iso)["sub"] == "0"


async def test_a_join_then_an_immediate_send_is_delivered_once_in_order(
        srv: ServerProc, http: httpx.Client) -> None:
    """The joiner's socket is attached by the join event on the user's channel; the room's
    channel is subscribed only then, so messages sent meanwhile come from the room's stream
    (the catch-up), and their live copies are dropped."""
    owner, joiner = make_user(http), make_user(http)
    w = await WS.open(srv.ws_url, joiner.access_token)
    rounds, burst = 6, 5
    for r in range(rounds):
        room = make_room(http, owner, is_private=False)
        seqs: list[int] = []

        async def send_burst() -> None:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as ah:
                for i in range(burst):  # one after the other: seqs 1..burst
                    resp = await ah.post(f"/rooms/{room['id']}/messages", json={"body": f"{r}:{i}"},
                                         headers=owner.headers)
                    assert resp.status_code == 201, resp.text

        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as ah:
            resp = await ah.post(f"/rooms/{room['id']}/join", headers=joiner.headers)
            assert resp.status_code in (200, 201), resp.text
        await send_burst()  # right after the join's reply: the joiner's process may not be subscribed yet
        while len(seqs) < burst:
            f = await w.recv(10)
            if f["type"] == "message" and f["message"]["room_id"] == room["id"]:
                seqs.append(f["message"]["seq"])
        assert seqs == list(range(1, burst + 1))
        # no late duplicate: a marker message after a pause is the next frame of that room
        await asyncio.sleep(0.3)
        resp = http.post(f"/rooms/{room['id']}/messages", json={"body": "marker"}, headers=owner.headers)
        assert resp.status_code == 201
        f = await w.recv_until(lambda f: f["type"] == "message" and f["message"]["room_id"] == room["id"])
        assert f["message"]["body"] == "marker" and f["message"]["seq"] == burst + 1
    await w.close()


async def test_a_ws_join_then_an_immediate_send_by_another_user_arrives_once(
        srv: ServerProc, http: httpx.Client) -> None:
    owner, joiner = make_user(http), make_user(http)
    room = make_room(http, owner, is_private=False)
    o = await WS.open(srv.ws_url, owner.access_token)
    w = await WS.open(srv.ws_url, joiner.access_token)
    await w.send({"type": "join", "room_id": room["id"]})
    await o.recv_until(lambda f: f["type"] == "member_joined" and f["membership"]["user_id"] == joiner.id)
    ack = await o.request({"type": "send", "room_id": room["id"], "body": "welcome"}, "ack")
    frames = []
    while True:
        f = await w.recv(10)
        frames.append(f["type"])
        if f["type"] == "message":
            assert f["message"] == ack["message"]
            break
    assert frames.count("joined") == 1 and frames.count("member_joined") == 1  # each once, none twice
    await asyncio.sleep(0.3)
    await w.send({"type": "ping"})
    assert (await w.recv(5))["type"] == "pong"  # no second copy of the message or the join came
    for ws in (o, w):
        await ws.close()


async def test_after_losing_the_subscription_everything_is_subscribed_again_and_clients_resync(
        srv: ServerProc, http: httpx.Client, node: SyncRedis, iso: Isolated) -> None:
    alice, bob = make_user(http), make_user(http)
    room = make_room(http, alice, member_ids=[bob.id])
    a = await WS.open(srv.ws_url, alice.access_token)
    b = await WS.open(srv.ws_url, bob.access_token)
    k = iso.keys
    needed = {k.user_channel(alice.id), k.user_channel(bob.id), k.room_channel(room["id"])}
    assert needed <= channels(node, iso)
    node.client_kill_filter(_id=subscriber(node, iso)["id"])
    assert (await a.recv_until(lambda f: f["type"] == "resync"))["reason"] == "fanout_gap"
    # the resync goes out once everything needed is subscribed again (and nothing more)
    assert channels(node, iso) == needed
    ack = await a.request({"type": "send", "room_id": room["id"], "body": "after the gap"}, "ack")
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"] == ack["message"]
    for ws in (a, b):
        await ws.close()


async def test_every_kind_of_event_reaches_its_recipients_on_room_and_user_channels(
        srv: ServerProc, http: httpx.Client) -> None:
    """Scripts publish room events on the room's channel and read events on the user's (on a
    cluster a different slot than the script's keys: PUBLISH names no key, so it may)."""
    alice, bob = make_user(http), make_user(http)
    rid = make_room(http, alice, member_ids=[bob.id])["id"]
    a = await WS.open(srv.ws_url, alice.access_token)
    b1, b2 = await WS.open(srv.ws_url, bob.access_token), await WS.open(srv.ws_url, bob.access_token)
    seq = (await a.request({"type": "send", "room_id": rid, "body": "hello"}, "ack"))["message"]["seq"]
    for b in (b1, b2):
        assert (await b.recv_until(lambda f: f["type"] == "message"))["message"]["seq"] == seq
    await a.send({"type": "edit", "room_id": rid, "seq": seq, "body": "edited"})  # change.lua
    for ws in (a, b1, b2):
        upd = await ws.recv_until(lambda f: f["type"] == "message_updated")
        assert upd["change"] == "edit" and upd["message"]["body"] == "edited"
    await b1.send({"type": "typing", "room_id": rid})  # Python's publish to the room
    assert (await a.recv_until(lambda f: f["type"] == "typing"))["user_id"] == bob.id
    await b1.send({"type": "read", "room_id": rid, "seq": seq})  # mark_read.lua, the user's channel
    for b in (b1, b2):
        read = await b.recv_until(lambda f: f["type"] == "read")
        assert read["room_id"] == rid and read["last_read_seq"] == seq and read["unread_count"] == 0
    # a kick: bob's sockets get member_left once and are detached; alice gets it once too
    resp = http.delete(f"/rooms/{rid}/members/{bob.id}", headers=alice.headers)
    assert resp.status_code in (200, 204), resp.text
    for ws in (a, b1, b2):
        assert (await ws.recv_until(lambda f: f["type"] == "member_left"))["user_id"] == bob.id
    await a.send({"type": "send", "room_id": rid, "body": "after the kick"})
    await a.recv_until(lambda f: f["type"] == "ack")
    for ws in (a, b1, b2):
        await ws.send({"type": "ping"})
        frames = []
        while not frames or frames[-1] != "pong":
            frames.append((await ws.recv(5))["type"])
        assert "member_left" not in frames and "message" not in frames, frames  # no duplicate, no leak
    for ws in (a, b1, b2):
        await ws.close()


async def test_a_room_subscribed_because_of_a_join_catches_up_from_its_stream_without_duplicates(
        redis_engine: Engine) -> None:
    """The fan-out's own parts on the real engine (no server): a join event for a user with a
    connection here arrives on the user's channel for a room this process holds no channel of;
    the messages already in the room's stream after the join's seq are delivered from there, and
    their live copies (which may still be on their way) are dropped: each seq once, in order."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from app.realtime.connection import Connection
    from app.realtime.events import message_payload
    from app.realtime.fanout import Subscriptions, subscribe_forever
    from app.realtime.registry import Registry
    from app.serialize import dumps
    from app.store.client import connect_redis_for
    from app.store.keys import Keys
    from tests.app.realtime.test_connection import FakeSocket, message

    iso = isolated_env("fc", {**redis_engine.env, "FANOUT_CHANNELS": "rooms"})
    keys = Keys(iso.prefix, cluster=redis_engine.cluster, fanout_rooms=True)
    cmd = connect_redis_for(iso.settings)
    sub = Redis.from_url(iso.settings.redis_url, decode_responses=True, retry=Retry(NoBackoff(), 0), protocol=2,
                         socket_timeout=None)
    reg = Registry()
    subs = reg.subs = Subscriptions(keys, reg, cmd)
    ready = asyncio.Event()
    tasks = [asyncio.create_task(subs.write_forever()),
             asyncio.create_task(subscribe_forever(sub, keys, reg, ready, None, subs))]
    try:
        await asyncio.wait_for(ready.wait(), 10)
        for attempt in range(5):  # each round a new room: the race differs from round to round
            user, room = f"u{attempt}", str(uuid.uuid4())
            ws = FakeSocket()
            conn = Connection(ws, user, registry=reg)
            reg.add(conn)
            conn.start()
            await reg.subscribed(user)
            msgs = [message(room, seq, "someone") for seq in range(1, 6)]
            for m in msgs[:3]:  # sent after the join, before this process holds the room's channel
                await cmd.xadd(keys.room_log(room), {"m": dumps(m)}, id=f"{m['seq']}-0")
            joined = {"type": "member_joined", "membership": {"room_id": room, "user_id": user}}
            await cmd.publish(keys.user_channel(user), f"j:{room}:{user}:1:0||{dumps(joined)}")
            await eventually(lambda: subs.room_live(room), 5)
            # live copies: 3 (its live event raced the subscription) and the new 4 and 5
            for m in msgs[2:]:
                if m["seq"] > 3:
                    await cmd.xadd(keys.room_log(room), {"m": dumps(m)}, id=f"{m['seq']}-0")
                await cmd.publish(keys.room_channel(room), message_payload(room, dumps(m)))
            await eventually(lambda: sum(f["type"] == "message" for f in ws.frames) >= 5, 5)
            await asyncio.sleep(0.2)
            seqs = [f["message"]["seq"] for f in ws.frames if f["type"] == "message"]
            assert seqs == [1, 2, 3, 4, 5], seqs
            assert [f["type"] for f in ws.frames][0] == "member_joined"  # the join first, then the room
            reg.remove(conn)
            conn.stop()
            await cmd.delete(keys.room_log(room))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sub.aclose()
        await cmd.aclose()
