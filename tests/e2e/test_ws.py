"""The WebSocket protocol against a real server process: handshake, frames, errors, close codes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.factories import TestUser, make_room, make_user
from tests.support import OwnServers, ServerProc
from tests.wsclient import WS, RawWS

pytestmark = pytest.mark.redis_engines  # single-node Redis and a Redis Cluster (tests/conftest.py)


@pytest.fixture
def alice(api: httpx.Client) -> TestUser:
    return make_user(api)


@pytest.fixture
def bob(api: httpx.Client) -> TestUser:
    return make_user(api)


# -- handshake ---------------------------------------------------------------------------

async def test_hello_lists_rooms_with_last_seq(server: ServerProc, api: httpx.Client, alice: TestUser) -> None:
    empty = make_room(api, alice)
    busy = make_room(api, alice)
    for i in range(3):
        assert api.post(f"/rooms/{busy['id']}/messages", json={"body": f"m{i}"}, headers=alice.headers).status_code == 201
    ws = await WS.open(server.ws_url, alice.access_token)
    assert ws.hello["user_id"] == alice.id and ws.hello["heartbeat_s"] == 5
    assert {r["room_id"]: r["last_seq"] for r in ws.hello["rooms"]} == {empty["id"]: 0, busy["id"]: 3}
    await ws.close()


@pytest.mark.redis_engines("single")  # the handshake's auth and origin checks: no Redis in them
async def test_token_in_authorization_header_and_allowed_origin(server: ServerProc, alice: TestUser) -> None:
    ws = await WS.open(server.ws_url, additional_headers={  # WS.open checks the hello
        "Authorization": f"Bearer {alice.access_token}", "Origin": "http://localhost:8000"})
    await ws.close()


@pytest.mark.redis_engines("single")  # the origin check: no Redis in it
async def test_a_page_from_the_server_itself_may_connect(server: ServerProc, alice: TestUser) -> None:
    # Same origin (scheme://host:port the client connected to) is not cross-site: allowed
    # even when it is not in WS_ALLOWED_ORIGINS; the same host on another port is not.
    ws = await WS.open(server.ws_url, alice.access_token, additional_headers={"Origin": server.base_url})
    await ws.close()
    with pytest.raises(InvalidStatus) as info:
        await WS.open(server.ws_url, alice.access_token, additional_headers={"Origin": "http://127.0.0.1:1"})
    assert info.value.response.status_code == 403


@pytest.mark.redis_engines("single")  # refused before the upgrade: no Redis in it
@pytest.mark.parametrize("query,headers,status", [
    ("", {}, 401),
    ("?token=garbage", {}, 401),
    ("?token={token}", {"Origin": "https://evil.example"}, 403),
    ("?token={token}", {"Origin": "null"}, 403),
])
async def test_refused_before_the_upgrade(server: ServerProc, alice: TestUser, query: str,
                                          headers: dict[str, str], status: int) -> None:
    with pytest.raises(InvalidStatus) as info:
        await WS.open(server.ws_url + query.format(token=alice.access_token), additional_headers=headers)
    assert info.value.response.status_code == status
    assert json.loads(info.value.response.body)["error"]["code"] in ("invalid_token", "forbidden")


@pytest.mark.redis_engines("single")  # token checks: no Redis in them
async def test_refresh_token_is_not_an_access_token(server: ServerProc, alice: TestUser) -> None:
    with pytest.raises(InvalidStatus) as info:
        await WS.open(server.ws_url, alice.refresh_token)
    assert info.value.response.status_code == 401


# -- frames ------------------------------------------------------------------------------

async def test_send_acks_the_sender_and_reaches_every_other_connection(server: ServerProc, api: httpx.Client,
                                                                       alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    a1 = await WS.open(server.ws_url, alice.access_token)
    a2 = await WS.open(server.ws_url, alice.access_token)
    b = await WS.open(server.ws_url, bob.access_token)
    ack = await a1.request({"type": "send", "room_id": room["id"], "body": "hello", "client_id": "k1"}, "ack")
    assert ack["client_id"] == "k1" and ack["message"]["seq"] == 1 and ack["message"]["body"] == "hello"
    for other in (a2, b):
        got = await other.recv_until(lambda f: f["type"] == "message")
        assert got["message"] == ack["message"]
    # HTTP sends reach every connection, the sender's too. On a1 this is the first message
    # frame: its own WebSocket send (seq 1), fanned out earlier, never came back to it (it got the ack).
    api.post(f"/rooms/{room['id']}/messages", json={"body": "from http"}, headers=alice.headers)
    for ws in (a1, a2, b):
        got = await ws.recv_until(lambda f: f["type"] == "message")
        assert got["message"]["seq"] == 2 and got["message"]["body"] == "from http"
    for ws in (a1, a2, b):
        await ws.close()


async def test_retried_client_id_over_ws_and_http_returns_the_first_message(
        server: ServerProc, api: httpx.Client, alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    a = await WS.open(server.ws_url, alice.access_token)
    b = await WS.open(server.ws_url, bob.access_token)
    frame = {"type": "send", "room_id": room["id"], "body": "once", "client_id": "retry-me"}
    first = await a.request(frame, "ack")
    again = await a.request({**frame, "body": "changed"}, "ack")
    assert again == first
    resp = api.post(f"/rooms/{room['id']}/messages", json={"body": "x", "client_id": "retry-me"}, headers=alice.headers)
    assert resp.status_code == 200 and resp.json() == first["message"]
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"]["seq"] == 1
    nxt = await a.request({**frame, "client_id": "another"}, "ack")
    assert nxt["message"]["seq"] == 2
    # the retries were not broadcast again: the next message b sees is the later seq 2
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"]["seq"] == 2
    await a.close()
    await b.close()


async def test_sync_after_reconnect_returns_exactly_the_missed(server: ServerProc, api: httpx.Client,
                                                              alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    b = await WS.open(server.ws_url, bob.access_token)
    a = await WS.open(server.ws_url, alice.access_token)
    for i in range(3):
        await a.request({"type": "send", "room_id": room["id"], "body": f"seen {i}"}, "ack")
    last = 0
    while last < 3:
        last = (await b.recv_until(lambda f: f["type"] == "message"))["message"]["seq"]
    await b.close()
    for i in range(7):
        await a.request({"type": "send", "room_id": room["id"], "body": f"missed {i}"}, "ack")
    b = await WS.open(server.ws_url, bob.access_token)
    assert {r["room_id"]: r["last_seq"] for r in b.hello["rooms"]}[room["id"]] == 10
    got = await b.request({"type": "sync", "room_id": room["id"], "after_seq": last, "limit": 5}, "sync")
    assert [m["seq"] for m in got["messages"]] == [4, 5, 6, 7, 8] and got["has_more"] is True
    got = await b.request({"type": "sync", "room_id": room["id"], "after_seq": 8}, "sync")
    assert [m["body"] for m in got["messages"]] == ["missed 5", "missed 6"] and got["has_more"] is False
    assert got["room_id"] == room["id"]
    await a.close()
    await b.close()


async def test_sync_after_redis_lost_the_member_set_still_answers_a_member(
        server: ServerProc, api: httpx.Client, redis_engine: Any, alice: TestUser, bob: TestUser) -> None:
    # A sync's membership check rides its read (one script); when the set is gone that read
    # says "unknown", and the full check must heal the set and answer, not refuse a member.
    import redis as redis_sync
    room = make_room(api, alice, member_ids=[bob.id])
    a = await WS.open(server.ws_url, alice.access_token)
    await a.request({"type": "send", "room_id": room["id"], "body": "before the loss"}, "ack")
    cls = redis_sync.RedisCluster if redis_engine.cluster else redis_sync.Redis
    client = cls.from_url(redis_engine.redis_url, decode_responses=True)
    try:
        assert client.delete(redis_engine.keys.room_members(room["id"])) == 1
        b = await WS.open(server.ws_url, bob.access_token)
        got = await b.request({"type": "sync", "room_id": room["id"], "after_seq": 0}, "sync")
        assert [m["body"] for m in got["messages"]] == ["before the loss"]
        assert client.sismember(redis_engine.keys.room_members(room["id"]), bob.id)  # healed
    finally:
        client.close()
    await a.close()
    await b.close()


async def test_typing_reaches_other_members_only(server: ServerProc, api: httpx.Client,
                                                 alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    a1 = await WS.open(server.ws_url, alice.access_token)
    a2 = await WS.open(server.ws_url, alice.access_token)
    b = await WS.open(server.ws_url, bob.access_token)
    await a1.send({"type": "typing", "room_id": room["id"]})
    got = await b.recv_until(lambda f: f["type"] == "typing")
    assert got == {"type": "typing", "room_id": room["id"], "user_id": alice.id}
    # bob's typing, fanned out after alice's, is the first typing her own connections see
    await b.send({"type": "typing", "room_id": room["id"]})
    for ws in (a1, a2):
        assert (await ws.recv_until(lambda f: f["type"] == "typing"))["user_id"] == bob.id
    for ws in (a1, a2, b):
        await ws.close()


async def test_rooms_over_the_socket(server: ServerProc, api: httpx.Client, alice: TestUser, bob: TestUser) -> None:
    marker = make_room(api, alice, member_ids=[bob.id])  # a room bob stays in, for proofs of absence
    a = await WS.open(server.ws_url, alice.access_token)
    b = await WS.open(server.ws_url, bob.access_token)
    created = await a.request({"type": "create_room", "name": "from ws", "topic": "t", "client_id": "cr1"},
                              "room_created")
    room = created["room"]
    assert room["name"] == "from ws" and room["my_role"] == "owner" and created["client_id"] == "cr1"
    joined = await b.request({"type": "join", "room_id": room["id"]}, "joined")
    assert joined["membership"]["user_id"] == bob.id and joined["membership"]["role"] == "member"
    await a.recv_until(lambda f: f["type"] == "member_joined" and f["membership"]["user_id"] == bob.id)
    ack = await a.request({"type": "send", "room_id": room["id"], "body": "welcome"}, "ack")
    assert (await b.recv_until(lambda f: f["type"] == "message"))["message"] == ack["message"]
    left = await b.request({"type": "leave", "room_id": room["id"]}, "left")
    assert left == {"type": "left", "room_id": room["id"]}
    assert (await a.recv_until(lambda f: f["type"] == "member_left"))["user_id"] == bob.id
    await a.request({"type": "send", "room_id": room["id"], "body": "gone?"}, "ack")
    # a later message in a room bob is still in reaches him; "gone?" must not have come first
    await a.request({"type": "send", "room_id": marker["id"], "body": "marker"}, "ack")
    await b.none_before(lambda f: f["type"] == "message" and f["message"]["room_id"] == marker["id"],
                        lambda f: f["type"] == "message" and f["message"]["room_id"] == room["id"])
    assert (await a.request({"type": "ping"}, "pong")) == {"type": "pong"}
    await a.close()
    await b.close()


async def test_every_bad_frame_gets_an_error_and_the_connection_stays_open(
        server: ServerProc, api: httpx.Client, alice: TestUser, bob: TestUser) -> None:
    mine = make_room(api, alice)
    public = make_room(api, bob)
    private = make_room(api, bob, is_private=True)
    a = await WS.open(server.ws_url, alice.access_token)
    cases: list[tuple[Any, str, str | None]] = [
        ("not json", "malformed_json", None),
        ("[1, 2]", "malformed_json", None),
        ({"type": "dance"}, "unknown_type", None),
        ({"body": "no type"}, "unknown_type", None),
        ({"type": ["send"], "client_id": "t1"}, "unknown_type", "t1"),
        ({"type": "send", "body": "no room", "client_id": "c1"}, "validation_failed", "c1"),
        ({"type": "send", "room_id": mine["id"], "client_id": "c2"}, "validation_failed", "c2"),
        ({"type": "send", "room_id": mine["id"], "body": "", "client_id": "c3"}, "validation_failed", "c3"),
        ({"type": "send", "room_id": mine["id"], "body": "x" * 4001, "client_id": "c4"}, "validation_failed", "c4"),
        ({"type": "send", "room_id": mine["id"], "body": "x", "client_id": "c" * 65}, "validation_failed", "c" * 65),
        ({"type": "send", "room_id": public["id"], "body": "x", "client_id": "c5"}, "not_member", "c5"),
        ({"type": "send", "room_id": private["id"], "body": "x", "client_id": "c6"}, "room_not_found", "c6"),
        ({"type": "send", "room_id": "nope", "body": "x"}, "room_not_found", None),
        ({"type": "sync", "room_id": mine["id"]}, "validation_failed", None),
        ({"type": "sync", "room_id": mine["id"], "after_seq": -1}, "validation_failed", None),
        ({"type": "sync", "room_id": mine["id"], "after_seq": 0, "limit": 0}, "validation_failed", None),
        ({"type": "sync", "room_id": public["id"], "after_seq": 0}, "not_member", None),
        ({"type": "sync", "room_id": private["id"], "after_seq": 0}, "room_not_found", None),
        ({"type": "typing", "room_id": public["id"]}, "not_member", None),
        ({"type": "typing", "room_id": private["id"]}, "room_not_found", None),
        ({"type": "join", "room_id": private["id"]}, "room_not_found", None),
        ({"type": "leave", "room_id": public["id"]}, "not_member", None),
        ({"type": "create_room", "name": ""}, "validation_failed", None),
    ]
    sent = 0
    for frame, code, ref in cases:
        await a.send(frame)
        err = await a.recv()
        assert err["type"] == "error" and err["code"] == code and err["ref"] == ref, (frame, err)
        assert isinstance(err["message"], str) and err["message"]
        assert (await a.request({"type": "ping"}, "pong"))["type"] == "pong"
        if isinstance(frame, dict) and frame.get("type") in ("send", "sync", "typing") \
                and code in ("not_member", "room_not_found"):
            # A frame about a room one is not in is a strike; a good send clears the strikes.
            ack = await a.request({"type": "send", "room_id": mine["id"], "body": "good"}, "ack")
            sent += 1
            assert ack["message"]["seq"] == sent  # none of the rejected sends consumed a seq
    ack = await a.request({"type": "send", "room_id": mine["id"], "body": "still fine"}, "ack")
    assert ack["message"]["seq"] == sent + 1
    await a.close()


@pytest.mark.redis_engines("single")  # a frame-size limit: no Redis in it
async def test_oversized_frame_closes_with_1009(server: ServerProc, alice: TestUser) -> None:
    a = await WS.open(server.ws_url, alice.access_token)
    await a.send("x" * (64 * 1024 + 1))
    with pytest.raises(ConnectionClosed) as info:
        await a.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


# -- close codes with their own servers -------------------------------------------------------

@pytest.fixture(scope="module")
def short_tokens(own_server: OwnServers) -> ServerProc:
    return own_server(name="short-tokens", ACCESS_TOKEN_TTL_S="2")


@pytest.fixture(scope="module")
def strict(own_server: OwnServers) -> ServerProc:
    return own_server(name="strict", RATE_MESSAGES="3", RATE_MESSAGES_WINDOW_S="60", RATE_LIMIT_STRIKES="2")


@pytest.mark.redis_engines("single")  # a token expiry timer: no Redis in it
async def test_expired_token_closes_with_4401(short_tokens: ServerProc) -> None:
    with httpx.Client(base_url=short_tokens.base_url, timeout=10) as api:
        user = make_user(api)
    a = await WS.open(short_tokens.ws_url, user.access_token)
    assert (await a.request({"type": "ping"}, "pong"))["type"] == "pong"
    with pytest.raises(ConnectionClosed) as info:
        await a.recv_until(lambda f: False, timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    await asyncio.sleep(1.5)
    with pytest.raises(InvalidStatus) as refused:
        await WS.open(short_tokens.ws_url, user.access_token)
    assert refused.value.response.status_code == 401


async def test_flooding_after_rate_limit_errors_closes_with_4429(strict: ServerProc) -> None:
    with httpx.Client(base_url=strict.base_url, timeout=10) as api:
        user = make_user(api)
        room = make_room(api, user)
        a = await WS.open(strict.ws_url, user.access_token)
        frames = []
        with pytest.raises(ConnectionClosed) as info:
            for i in range(20):
                frames.append(await a.request({"type": "send", "room_id": room["id"], "body": f"{i}",
                                               "client_id": f"f{i}"}, "ack"))
        assert info.value.rcvd is not None and info.value.rcvd.code == 4429
        # RATE_LIMIT_STRIKES=2 rate-limited frames are tolerated; the third is answered, then closed
        assert [f["type"] for f in frames] == ["ack"] * 3 + ["error"] * 3
        assert all(f["code"] == "rate_limited" and f["details"]["retry_after"] >= 1 for f in frames[3:])
        assert [f["ref"] for f in frames[3:]] == ["f3", "f4", "f5"]
        resp = api.post(f"/rooms/{room['id']}/messages", json={"body": "http"}, headers=user.headers)
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"]["code"] == "rate_limited"
        history = api.get(f"/rooms/{room['id']}/messages", headers=user.headers).json()
        assert [m["seq"] for m in history["items"]] == [1, 2, 3]


@pytest.mark.redis_engines("single")  # the heartbeat: no Redis in it
async def test_a_client_that_stops_answering_pings_is_closed(server: ServerProc, alice: TestUser) -> None:
    """A client that completes the handshake and then never answers a ping."""
    ws = await RawWS.open(server.ws_url, alice.access_token, answer_pings=False)
    try:
        # heartbeat_s is 5 in the tests: a ping after 5 s, the close 5 s later without a pong
        code = await ws.lost(timeout=30)  # until the server closes the TCP connection
        assert ws.pings >= 1  # the server pinged
        assert code == 1011
    finally:
        ws.close()


# -- sessions ending, foreign rooms, per-user limits ----------------------------------------------

async def _closed_with(ws: WS, timeout: float = 10.0) -> int | None:
    """Read until the server closes; its close code."""
    with pytest.raises(ConnectionClosed) as info:
        await ws.recv_until(lambda f: False, timeout=timeout)
    return info.value.rcvd.code if info.value.rcvd is not None else None


async def test_logout_closes_that_logins_sockets_with_4401_at_once(server: ServerProc, api: httpx.Client,
                                                                   alice: TestUser) -> None:
    other_login = api.post("/auth/login", json={"username": alice.username, "password": alice.password}).json()
    a1 = await WS.open(server.ws_url, alice.access_token)
    a2 = await WS.open(server.ws_url, alice.access_token)
    other = await WS.open(server.ws_url, other_login["access_token"])
    resp = api.post("/auth/logout", json={"refresh_token": alice.refresh_token}, headers=alice.headers)
    assert resp.status_code == 204
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await _closed_with(a1) == 4401 and await _closed_with(a2) == 4401
    assert loop.time() - start < 3.0  # at once, not when the access token expires (15 min)
    assert (await other.request({"type": "ping"}, "pong"))["type"] == "pong"  # another login lives on
    with pytest.raises(InvalidStatus) as refused:
        await WS.open(server.ws_url, alice.access_token)
    assert refused.value.response.status_code == 401
    await other.close()


async def test_a_reused_refresh_token_closes_the_familys_sockets(server: ServerProc, api: httpx.Client,
                                                                 alice: TestUser) -> None:
    ws = await WS.open(server.ws_url, alice.access_token)
    rotated = api.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert rotated.status_code == 200
    # A socket opened with the rotated pair's access token belongs to the same login (family).
    ws2 = await WS.open(server.ws_url, rotated.json()["access_token"])
    reused = api.post("/auth/refresh", json={"refresh_token": alice.refresh_token})  # theft detected
    assert reused.status_code == 401 and reused.json()["error"]["code"] == "refresh_token_reused"
    assert await _closed_with(ws) == 4401 and await _closed_with(ws2) == 4401


async def test_frames_about_foreign_rooms_are_strikes_then_4429(server: ServerProc, api: httpx.Client,
                                                               alice: TestUser, bob: TestUser) -> None:
    public = make_room(api, bob)
    a = await WS.open(server.ws_url, alice.access_token)
    frames = [{"type": "send", "room_id": public["id"], "body": "x"},
              {"type": "sync", "room_id": public["id"], "after_seq": 0},
              {"type": "typing", "room_id": public["id"]}]
    codes = []
    # RATE_LIMIT_STRIKES (5 here) are tolerated; the sixth is answered, then the socket closes.
    with pytest.raises(ConnectionClosed) as info:
        for i in range(10):
            await a.send(frames[i % 3])
            codes.append((await a.recv())["code"])
    assert codes == ["not_member"] * 6
    assert info.value.rcvd is not None and info.value.rcvd.code == 4429


async def test_sync_and_typing_stop_at_once_for_a_kicked_member(server: ServerProc, api: httpx.Client,
                                                                alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    b = await WS.open(server.ws_url, bob.access_token)
    assert (await b.request({"type": "sync", "room_id": room["id"], "after_seq": 0}, "sync"))["type"] == "sync"
    assert api.delete(f"/rooms/{room['id']}/members/{bob.id}", headers=alice.headers).status_code == 204
    # Straight after the kick's answer, whether or not its event has reached bob's socket yet.
    err = await b.request({"type": "sync", "room_id": room["id"], "after_seq": 0}, "sync")
    assert err["type"] == "error" and err["code"] == "not_member"
    err = await b.request({"type": "typing", "room_id": room["id"]}, "typing")
    assert err["type"] == "error" and err["code"] == "not_member"
    await b.close()


@pytest.fixture(scope="module")
def limited(own_server: OwnServers) -> ServerProc:
    return own_server(name="limited", RATE_ROOMS="2", RATE_ROOMS_WINDOW_S="60", RATE_JOINS="2",
                      RATE_JOINS_WINDOW_S="60")


@pytest.mark.redis_engines("single")  # global rate keys, one INCR each (no script): same on a cluster
async def test_room_creation_and_joins_are_limited_per_user_over_http_and_ws(limited: ServerProc) -> None:
    with httpx.Client(base_url=limited.base_url, timeout=10) as api:
        owner, joiner = make_user(api), make_user(api)
        made = [make_room(api, owner) for _ in range(2)]
        resp = api.post("/rooms", json={"name": "third"}, headers=owner.headers)
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        ws = await WS.open(limited.ws_url, owner.access_token)
        err = await ws.request({"type": "create_room", "name": "fourth"}, "room_created")
        assert err["type"] == "error" and err["code"] == "rate_limited"
        mine = api.get("/rooms", headers=owner.headers).json()["items"]
        assert sorted(r["id"] for r in mine) == sorted(r["id"] for r in made)
        for room in made:
            assert api.post(f"/rooms/{room['id']}/join", headers=joiner.headers).status_code == 200
        resp = api.post(f"/rooms/{made[0]['id']}/join", headers=joiner.headers)
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
        jws = await WS.open(limited.ws_url, joiner.access_token)
        err = await jws.request({"type": "join", "room_id": made[1]["id"]}, "joined")
        assert err["type"] == "error" and err["code"] == "rate_limited"
        await ws.close()
        await jws.close()
