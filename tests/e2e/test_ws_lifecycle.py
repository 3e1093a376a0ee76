"""The WebSocket side of issue 12 against a real server process: the edit, delete, react and
read frames, the events they cause, the hello's read state and sync with after_version."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.factories import TestUser, make_room, make_user
from tests.support import ServerProc
from tests.wsclient import WS

THUMBS = "\N{THUMBS UP SIGN}"


@pytest.fixture
def alice(api: httpx.Client) -> TestUser:
    return make_user(api)


@pytest.fixture
def bob(api: httpx.Client) -> TestUser:
    return make_user(api)


def updated(seq: int, change: str | None = None) -> Any:
    return lambda f: (f["type"] == "message_updated" and f["message"]["seq"] == seq
                      and (change is None or f["change"] == change))


def post(api: httpx.Client, user: TestUser, room_id: str, body: str) -> dict[str, Any]:
    resp = api.post(f"/rooms/{room_id}/messages", json={"body": body}, headers=user.headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_edit_delete_and_react_reach_every_connection_the_actors_too(
        server: ServerProc, api: httpx.Client, alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    rid = room["id"]
    a1, a2, b = [await WS.open(server.ws_url, u.access_token) for u in (alice, alice, bob)]
    ack = await a1.request({"type": "send", "room_id": rid, "body": "frist", "client_id": "c1"}, "ack")
    seq = ack["message"]["seq"]

    await a1.send({"type": "edit", "room_id": rid, "seq": seq, "body": "first"})
    for ws in (a1, a2, b):
        ev = await ws.recv_until(updated(seq, "edit"))
        assert ev["room_id"] == rid and ev["message"]["body"] == "first" and ev["message"]["edited_at"]
        assert ev["message"]["id"] == ack["message"]["id"] and ev["message"]["version"] == 1

    await b.send({"type": "react", "room_id": rid, "seq": seq, "emoji": THUMBS, "op": "add"})
    for ws in (a1, a2, b):
        ev = await ws.recv_until(updated(seq, "reaction"))
        assert ev["message"]["reactions"] == [{"emoji": THUMBS, "count": 1, "user_ids": [bob.id]}]  # no `me`
        assert ev["message"]["version"] == 2

    # A no-op reaction is answered by nothing: the next event anyone sees is the delete.
    await b.send({"type": "react", "room_id": rid, "seq": seq, "emoji": THUMBS, "op": "add"})
    await a2.send({"type": "delete", "room_id": rid, "seq": seq})
    for ws in (a1, a2, b):
        ev = await ws.none_before(updated(seq, "delete"), lambda f: f["type"] == "error" or (
            f["type"] == "message_updated" and f["change"] != "delete"))
        assert ev["message"]["deleted"] is True and ev["message"]["body"] == "" and ev["message"]["version"] == 3
    for ws in (a1, a2, b):
        await ws.close()


async def test_bad_change_frames_are_error_frames_with_ref(server: ServerProc, api: httpx.Client,
                                                           alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    rid = room["id"]
    msg = post(api, alice, rid, "alice's")
    b = await WS.open(server.ws_url, bob.access_token)
    cases = [
        ({"type": "edit", "room_id": rid, "seq": msg["seq"], "body": "mine now"}, "forbidden"),
        ({"type": "edit", "room_id": rid, "seq": msg["seq"], "body": ""}, "validation_failed"),
        ({"type": "edit", "room_id": rid, "seq": "1", "body": "x"}, "validation_failed"),
        ({"type": "edit", "room_id": rid, "seq": 2**63, "body": "x"}, "validation_failed"),
        ({"type": "delete", "room_id": rid, "seq": msg["seq"]}, "forbidden"),
        ({"type": "delete", "room_id": rid, "seq": 0}, "message_not_found"),
        ({"type": "delete", "room_id": rid, "seq": 99}, "message_not_found"),
        ({"type": "react", "room_id": rid, "seq": msg["seq"], "emoji": THUMBS, "op": "toggle"}, "validation_failed"),
        ({"type": "react", "room_id": rid, "seq": msg["seq"], "emoji": "a b", "op": "add"}, "validation_failed"),
        ({"type": "react", "room_id": rid, "seq": msg["seq"], "op": "add"}, "validation_failed"),
        ({"type": "read", "room_id": rid, "seq": -1}, "validation_failed"),
        ({"type": "read", "room_id": rid}, "validation_failed"),
        ({"type": "sync", "room_id": rid, "after_seq": 0, "after_version": -1}, "validation_failed"),
        ({"type": "sync", "room_id": rid, "after_seq": 0, "after_version": "0"}, "validation_failed"),
    ]
    for i, (frame, code) in enumerate(cases):
        err = await b.request({**frame, "client_id": f"ref-{i}"}, "nothing")
        assert (err["type"], err["code"], err["ref"]) == ("error", code, f"ref-{i}"), (frame, err)
    # The connection stays open and the message untouched.
    assert (await b.request({"type": "ping"}, "pong"))["type"] == "pong"
    got = api.get(f"/rooms/{rid}/messages/{msg['seq']}", headers=alice.headers).json()
    assert got["body"] == "alice's" and got["deleted"] is False
    await b.close()


async def test_a_stranger_gets_the_rooms_error(server: ServerProc, api: httpx.Client, alice: TestUser,
                                               bob: TestUser) -> None:
    room = make_room(api, alice)
    secret = make_room(api, alice, is_private=True)
    msg = post(api, alice, room["id"], "hi")
    for rid, code in ((room["id"], "not_member"), (secret["id"], "room_not_found")):
        b = await WS.open(server.ws_url, bob.access_token)
        for frame in ({"type": "edit", "room_id": rid, "seq": msg["seq"], "body": "x"},
                      {"type": "delete", "room_id": rid, "seq": msg["seq"]},
                      {"type": "react", "room_id": rid, "seq": msg["seq"], "emoji": THUMBS, "op": "add"},
                      {"type": "read", "room_id": rid, "seq": 1}):
            err = await b.request(frame, "nothing")
            assert (err["type"], err["code"]) == ("error", code), (frame, err)
        # Each was a strike (RATE_LIMIT_STRIKES = 5 are tolerated): two more and it is closed.
        for _ in range(2):
            await b.send({"type": "read", "room_id": rid, "seq": 1})
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(3):
                await b.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 4429
    assert api.get(f"/rooms/{room['id']}/messages/{msg['seq']}", headers=alice.headers).json()["reactions"] == []


async def test_read_moves_the_marker_on_every_connection_of_the_user(
        server: ServerProc, api: httpx.Client, alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    rid = room["id"]
    for i in range(5):
        post(api, alice, rid, f"m{i}" + (f" @{bob.username}" if i == 4 else ""))
    b1, b2 = [await WS.open(server.ws_url, bob.access_token) for _ in range(2)]
    a = await WS.open(server.ws_url, alice.access_token)
    hello = {r["room_id"]: r for r in b1.hello["rooms"]}[rid]
    assert hello == {"room_id": rid, "last_seq": 5, "last_version": 0, "last_read_seq": 0, "unread_count": 5,
                     "mention_count": 1}
    mine = {r["room_id"]: r for r in a.hello["rooms"]}[rid]
    assert (mine["last_read_seq"], mine["unread_count"]) == (5, 0)  # one's own messages are read

    want = {"type": "read", "room_id": rid, "last_read_seq": 3, "unread_count": 2, "mention_count": 1}
    assert await b1.request({"type": "read", "room_id": rid, "seq": 3}, "read") == want
    assert await b2.recv_until(lambda f: f["type"] == "read") == want
    # Not moved (an older seq): only the sending connection is answered, once. The HTTP
    # read after it moves the marker and is the next read frame both connections get.
    assert await b2.request({"type": "read", "room_id": rid, "seq": 2}, "read") == want
    assert api.post(f"/rooms/{rid}/read", json={"seq": 9}, headers=bob.headers).status_code == 200
    done = {"type": "read", "room_id": rid, "last_read_seq": 5, "unread_count": 0, "mention_count": 0}
    assert await b1.none_before(lambda f: f["type"] == "read", lambda f: f["type"] == "error") == done
    assert await b2.none_before(lambda f: f["type"] == "read", lambda f: f["type"] == "error") == done
    # Alice's connection saw none of bob's markers: the next frame it gets is her pong.
    await a.send({"type": "ping"})
    await a.none_before(lambda f: f["type"] == "pong", lambda f: f["type"] == "read")
    for ws in (a, b1, b2):
        await ws.close()


async def test_sync_with_after_version_returns_missed_messages_and_changes(
        server: ServerProc, api: httpx.Client, alice: TestUser, bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    rid = room["id"]
    seen = [post(api, alice, rid, f"seen {i}") for i in range(4)]
    b = await WS.open(server.ws_url, bob.access_token)
    cursor = {r["room_id"]: r for r in b.hello["rooms"]}[rid]
    assert (cursor["last_seq"], cursor["last_version"]) == (4, 0)
    await b.close()
    # While bob is away: two changes to one old message (collapsed into one), one to another,
    # and two new messages (one of them changed too: it comes in `messages`, as it is now).
    h = alice.headers
    api.patch(f"/rooms/{rid}/messages/{seen[1]['seq']}", json={"body": "seen 1, edited"}, headers=h)
    api.put(f"/rooms/{rid}/messages/{seen[1]['seq']}/reactions/%F0%9F%91%8D", headers=bob.headers)
    api.delete(f"/rooms/{rid}/messages/{seen[3]['seq']}", headers=h)
    new = [post(api, alice, rid, f"new {i}") for i in range(2)]
    api.patch(f"/rooms/{rid}/messages/{new[0]['seq']}", json={"body": "new 0, edited"}, headers=h)

    b = await WS.open(server.ws_url, bob.access_token)
    hello = {r["room_id"]: r for r in b.hello["rooms"]}[rid]
    assert (hello["last_seq"], hello["last_version"]) == (6, 4)
    got = await b.request({"type": "sync", "room_id": rid, "after_seq": 4, "after_version": 0}, "sync")
    assert [(m["seq"], m["body"]) for m in got["messages"]] == [(5, "new 0, edited"), (6, "new 1")]
    assert got["has_more"] is False and got["changes_has_more"] is False and got["last_version"] == 4
    assert [(m["seq"], m["version"]) for m in got["changes"]] == [(2, 2), (4, 3)]  # ascending by version
    edited = got["changes"][0]
    assert edited["body"] == "seen 1, edited" and edited["reactions"][0]["me"] is True  # rendered for bob
    assert got["changes"][1]["deleted"] is True
    # Paged: one change at a time, then nothing left from last_version on.
    page = await b.request({"type": "sync", "room_id": rid, "after_seq": 6, "after_version": 0, "limit": 1}, "sync")
    assert [m["seq"] for m in page["changes"]] == [2] and page["changes_has_more"] is True
    page = await b.request({"type": "sync", "room_id": rid, "after_seq": 6, "after_version": 2, "limit": 1}, "sync")
    assert [m["seq"] for m in page["changes"]] == [4] and page["changes_has_more"] is True
    page = await b.request({"type": "sync", "room_id": rid, "after_seq": 6, "after_version": 3, "limit": 1}, "sync")
    assert [m["seq"] for m in page["changes"]] == [5] and page["changes_has_more"] is False
    done = await b.request({"type": "sync", "room_id": rid, "after_seq": 6, "after_version": 4}, "sync")
    assert done["messages"] == [] and done["changes"] == [] and done["last_version"] == 4
    # Without after_version the answer is as before.
    plain = await b.request({"type": "sync", "room_id": rid, "after_seq": 5}, "sync")
    assert set(plain) == {"type", "room_id", "messages", "has_more"}
    await b.close()


async def test_send_with_reply_to_over_the_websocket(server: ServerProc, api: httpx.Client, alice: TestUser,
                                                     bob: TestUser) -> None:
    room = make_room(api, alice, member_ids=[bob.id])
    orig = post(api, alice, room["id"], "the question")
    b = await WS.open(server.ws_url, bob.access_token)
    ack = await b.request({"type": "send", "room_id": room["id"], "body": "the answer", "reply_to": orig["seq"],
                           "client_id": "r1"}, "ack")
    assert ack["message"]["reply_to"] == {"seq": orig["seq"], "sender_id": alice.id, "excerpt": "the question",
                                          "deleted": False}
    err = await b.request({"type": "send", "room_id": room["id"], "body": "x", "reply_to": 77, "client_id": "r2"},
                          "ack")
    assert (err["type"], err["code"], err["ref"]) == ("error", "validation_failed", "r2")
    assert "reply_to" in err["details"]["fields"]
    await b.close()


async def test_odd_field_values_are_error_frames_never_internal(server: ServerProc, api: httpx.Client,
                                                                alice: TestUser) -> None:
    room = make_room(api, alice)
    msg = post(api, alice, room["id"], "target")
    base = {"edit": {"room_id": room["id"], "seq": msg["seq"], "body": "x"},
            "delete": {"room_id": room["id"], "seq": msg["seq"]},
            "react": {"room_id": room["id"], "seq": msg["seq"], "emoji": THUMBS, "op": "add"},
            "read": {"room_id": room["id"], "seq": 1},
            "sync": {"room_id": room["id"], "after_seq": 0, "after_version": 0}}
    odd = [None, True, 1.5, -1, 2**63, 2**64, "x", "", [], {}, "\x00"]
    ws = await WS.open(server.ws_url, alice.access_token)
    for kind, fields in base.items():
        for name in fields:
            # A string room_id of no room is a strike (a foreign room): those have their own test.
            for value in (v for v in odd if not (name == "room_id" and v in ("x", ""))):
                await ws.send({"type": kind, **fields, name: value})
                await ws.send({"type": "ping"})
                while (frame := await ws.recv())["type"] != "pong":
                    assert frame.get("code") != "internal_error", (kind, name, value, frame)
    got = api.get(f"/rooms/{room['id']}/messages/{msg['seq']}", headers=alice.headers).json()
    # Only the frames whose odd value was still valid did anything: the body "x", the emoji "x".
    assert (got["deleted"], got["body"], [r["emoji"] for r in got["reactions"]]) == (False, "x", ["x"])
    await ws.close()
