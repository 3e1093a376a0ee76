"""The HTTP surface of issue 12 through a real server process: edits, deletes, reactions,
replies, read markers, unread counts on rooms, and search (docs/api.md)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.checks import assert_error
from tests.factories import TestUser, make_room, make_user, unique

BIG = 2**63  # one past a bigint
THUMBS = "\N{THUMBS UP SIGN}"


def send(api: httpx.Client, user: TestUser, room_id: str, body: str, **extra: Any) -> dict[str, Any]:
    resp = api.post(f"/rooms/{room_id}/messages", json={"body": body, **extra}, headers=user.headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


def reaction_url(room_id: str, seq: int | str, emoji: str) -> str:
    return f"/rooms/{room_id}/messages/{seq}/reactions/{quote(emoji, safe='')}"


def get(api: httpx.Client, user: TestUser, room_id: str, seq: int) -> dict[str, Any]:
    resp = api.get(f"/rooms/{room_id}/messages/{seq}", headers=user.headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def trio(api: httpx.Client) -> tuple[TestUser, TestUser, dict[str, Any]]:
    """An owner and a plain member in a public room."""
    owner, member = make_user(api), make_user(api)
    room = make_room(api, owner, member_ids=[member.id])
    return owner, member, room


# -- edits ---------------------------------------------------------------------------------

def test_the_sender_edits_a_text_message_and_readers_see_the_new_text(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    msg = send(api, member, room["id"], "helo wrld")
    assert msg["edited_at"] is None and msg["version"] == 0 and msg["deleted"] is False
    resp = api.patch(f"/rooms/{room['id']}/messages/{msg['seq']}", json={"body": "hello world @%s" % owner.username},
                     headers=member.headers)
    assert resp.status_code == 200, resp.text
    edited = resp.json()
    assert edited["body"] == f"hello world @{owner.username}" and edited["seq"] == msg["seq"]
    assert edited["id"] == msg["id"] and edited["edited_at"] and edited["edited_at"].endswith("Z")
    assert edited["version"] >= 1 and edited["mentions"] == [owner.username.lower()]
    seen = get(api, owner, room["id"], msg["seq"])
    assert seen["body"] == edited["body"] and seen["version"] == edited["version"]
    # The same text again changes nothing: no new version.
    again = api.patch(f"/rooms/{room['id']}/messages/{msg['seq']}", json={"body": edited["body"]},
                      headers=member.headers)
    assert again.status_code == 200 and again.json()["version"] == edited["version"]


def test_only_the_sender_edits_and_bad_edits_are_refused(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    msg = send(api, member, room["id"], "mine")
    url = f"/rooms/{room['id']}/messages/{msg['seq']}"
    err = assert_error(api.patch(url, json={"body": "owner says"}, headers=owner.headers), 403, "forbidden")
    assert err["details"]["reason"] == "not_sender"
    for bad in ({"body": ""}, {"body": "   "}, {"body": "x" * 4001}, {"body": 5}, {}):
        assert_error(api.patch(url, json=bad, headers=member.headers), 422, "validation_failed", "body")
    assert_error(api.patch(url, content=b"{nope", headers={**member.headers, "Content-Type": "application/json"}),
                 400, "malformed_json")
    assert get(api, owner, room["id"], msg["seq"])["body"] == "mine"
    assert api.patch(url, json={"body": "x"}).status_code == 401


@pytest.mark.parametrize("seq,status,code", [
    ("0", 404, "message_not_found"), ("abc", 404, "message_not_found"), ("999999", 404, "message_not_found"),
    (str(BIG), 422, "validation_failed"), ("-1", 404, "message_not_found"),
])
def test_a_seq_that_names_no_message(api: httpx.Client, trio: Any, seq: str, status: int, code: str) -> None:
    owner, _, room = trio
    send(api, owner, room["id"], "only one")
    base = f"/rooms/{room['id']}/messages/{seq}"
    for resp in (api.patch(base, json={"body": "x"}, headers=owner.headers), api.delete(base, headers=owner.headers),
                 api.put(reaction_url(room["id"], seq, THUMBS), headers=owner.headers),
                 api.delete(reaction_url(room["id"], seq, THUMBS), headers=owner.headers)):
        assert_error(resp, status, code)


def test_seqs_near_the_bigint_limit_with_changed_messages(api: httpx.Client, trio: Any) -> None:
    # With changes in the room's overlay, history read the overlay seq by seq with a Lua
    # `for s = lo, hi`: past 2^53 a double's s + 1 == s, and one GET blocked Redis for good.
    owner, _, room = trio
    for body in ("a", "b", "c"):
        m = send(api, owner, room["id"], body)
        assert api.put(reaction_url(room["id"], m["seq"], THUMBS), headers=owner.headers).status_code == 200
    for seq in (BIG - 2, BIG - 1):
        assert_error(api.get(f"/rooms/{room['id']}/messages/{seq}", headers=owner.headers, timeout=5), 404,
                     "message_not_found")
        page = api.get(f"/rooms/{room['id']}/messages", params={"after": seq - 3, "before": seq},
                       headers=owner.headers, timeout=5)
        assert page.status_code == 200 and page.json() == {"items": [], "has_more": False}
    assert [m["body"] for m in api.get(f"/rooms/{room['id']}/messages", headers=owner.headers).json()["items"]] == \
        ["a", "b", "c"]


def test_strangers_learn_nothing(api: httpx.Client, trio: Any) -> None:
    owner, _, room = trio
    msg = send(api, owner, room["id"], "public words")
    secret = make_room(api, owner, is_private=True)
    hidden = send(api, owner, secret["id"], "private words")
    stranger = make_user(api)
    for rid, seq, status, code in ((room["id"], msg["seq"], 403, "not_member"),
                                   (secret["id"], hidden["seq"], 404, "room_not_found"),
                                   (secret["id"], "abc", 404, "room_not_found"),
                                   (str(uuid.uuid4()), 1, 404, "room_not_found"),
                                   ("not-a-room", 1, 404, "room_not_found")):
        url = f"/rooms/{rid}/messages/{seq}"
        h = stranger.headers
        for resp in (api.patch(url, json={"body": "x"}, headers=h), api.delete(url, headers=h),
                     api.put(reaction_url(rid, seq, THUMBS), headers=h),
                     api.post(f"/rooms/{rid}/read", json={"seq": 1}, headers=h)):
            if seq == "abc" and resp.request.url.path.endswith("/read"):
                continue
            assert_error(resp, status, code)
    assert get(api, owner, room["id"], msg["seq"])["body"] == "public words"


# -- deletes -------------------------------------------------------------------------------

def test_delete_leaves_a_tombstone_and_is_harmless_twice(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    msg = send(api, member, room["id"], "oops @" + owner.username, client_id=unique("c"))
    url = f"/rooms/{room['id']}/messages/{msg['seq']}"
    resp = api.delete(url, headers=member.headers)
    assert resp.status_code == 200, resp.text
    tomb = resp.json()
    assert tomb["deleted"] is True and tomb["body"] == "" and tomb["file"] is None and tomb["reply_to"] is None
    assert tomb["mentions"] == [] and tomb["reactions"] == [] and tomb["version"] >= 1
    assert {k: tomb[k] for k in ("id", "seq", "sender_id", "kind", "created_at", "client_id")} == \
        {k: msg[k] for k in ("id", "seq", "sender_id", "kind", "created_at", "client_id")}
    again = api.delete(url, headers=member.headers)
    assert again.status_code == 200 and again.json() == tomb
    assert get(api, owner, room["id"], msg["seq"])["deleted"] is True
    # A deleted message can be neither edited nor reacted to.
    assert_error(api.patch(url, json={"body": "back"}, headers=member.headers), 409, "message_deleted")
    assert_error(api.put(reaction_url(room["id"], msg["seq"], THUMBS), headers=owner.headers), 409,
                 "message_deleted")


def test_owner_and_admin_delete_others_messages_members_do_not(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    other = make_user(api)
    assert api.post(f"/rooms/{room['id']}/members", json={"user_id": other.id}, headers=owner.headers).status_code == 201
    by_member = send(api, member, room["id"], "member's")
    err = assert_error(api.delete(f"/rooms/{room['id']}/messages/{by_member['seq']}", headers=other.headers),
                       403, "forbidden")
    assert err["details"]["reason"] == "not_sender"
    assert api.delete(f"/rooms/{room['id']}/messages/{by_member['seq']}",
                      headers=owner.headers).json()["deleted"] is True
    assert api.patch(f"/rooms/{room['id']}/members/{other.id}", json={"role": "admin"},
                     headers=owner.headers).status_code == 200
    second = send(api, member, room["id"], "again")
    assert api.delete(f"/rooms/{room['id']}/messages/{second['seq']}", headers=other.headers).json()["deleted"]


# -- reactions -------------------------------------------------------------------------------

def test_reactions_are_idempotent_and_per_viewer(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    msg = send(api, owner, room["id"], "react to me")
    url = reaction_url(room["id"], msg["seq"], THUMBS)
    first = api.put(url, headers=member.headers)
    assert first.status_code == 200, first.text
    assert first.json()["reactions"] == [{"emoji": THUMBS, "count": 1, "user_ids": [member.id], "me": True}]
    version = first.json()["version"]
    again = api.put(url, headers=member.headers).json()
    assert again["version"] == version and again["reactions"][0]["count"] == 1
    both = api.put(url, headers=owner.headers).json()
    assert both["reactions"] == [{"emoji": THUMBS, "count": 2, "user_ids": [member.id, owner.id], "me": True}]
    heart = api.put(reaction_url(room["id"], msg["seq"], "\N{HEAVY BLACK HEART}\N{VARIATION SELECTOR-16}"),
                    headers=owner.headers).json()
    assert [r["emoji"] for r in heart["reactions"]] == [THUMBS, "\u2764\ufe0f"]  # first-reacted order
    seen = get(api, member, room["id"], msg["seq"])["reactions"]
    assert [(r["emoji"], r["count"], r["me"]) for r in seen] == [(THUMBS, 2, True), ("\u2764\ufe0f", 1, False)]
    gone = api.delete(url, headers=member.headers).json()
    assert gone["reactions"][0] == {"emoji": THUMBS, "count": 1, "user_ids": [owner.id], "me": False}
    assert api.delete(url, headers=member.headers).json()["version"] == gone["version"]  # not there: a no-op


def test_any_text_is_an_emoji_and_the_path_is_decoded_once(api: httpx.Client, trio: Any) -> None:
    owner, _, room = trio
    msg = send(api, owner, room["id"], "x")
    # The server keeps no emoji list; "%41" is an emoji of its own (sent as %2541), so is "a/b".
    for odd in (":party_parrot:", "%41", "a/b", "👩‍💻"):
        got = api.put(reaction_url(room["id"], msg["seq"], odd), headers=owner.headers)
        assert got.status_code == 200 and got.json()["reactions"][-1]["emoji"] == odd, got.text


@pytest.mark.parametrize("emoji", ["a b", "tab\there", "x" * 33, "nl\n", "\u00a0", "\u0085"])
def test_bad_emoji_are_422(api: httpx.Client, trio: Any, emoji: str) -> None:
    owner, _, room = trio
    msg = send(api, owner, room["id"], "x")
    assert_error(api.put(reaction_url(room["id"], msg["seq"], emoji), headers=owner.headers), 422,
                 "validation_failed", "emoji")


def test_distinct_emoji_are_capped(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    msg = send(api, owner, room["id"], "so many feelings")
    for i in range(20):  # REACTIONS_MAX_EMOJI
        assert api.put(reaction_url(room["id"], msg["seq"], f"e{i}"), headers=owner.headers).status_code == 200
    err = assert_error(api.put(reaction_url(room["id"], msg["seq"], "e20"), headers=owner.headers), 409,
                       "reaction_limit")
    assert err["details"]["max"] == 20
    # Joining an existing reaction is still fine.
    assert api.put(reaction_url(room["id"], msg["seq"], "e3"), headers=member.headers).json()["reactions"][3]["count"] == 2


# -- replies -----------------------------------------------------------------------------

def test_a_reply_quotes_its_original(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    orig = send(api, owner, room["id"], "q" * 150)
    reply = send(api, member, room["id"], "answer", reply_to=orig["seq"])
    assert reply["reply_to"] == {"seq": orig["seq"], "sender_id": owner.id, "excerpt": "q" * 120, "deleted": False}
    assert get(api, member, room["id"], reply["seq"])["reply_to"]["excerpt"] == "q" * 120
    assert api.delete(f"/rooms/{room['id']}/messages/{orig['seq']}", headers=owner.headers).status_code == 200
    # Read back, the quote shows the original as it is now.
    assert get(api, member, room["id"], reply["seq"])["reply_to"] == {
        "seq": orig["seq"], "sender_id": owner.id, "excerpt": "", "deleted": True}
    # A deleted original, a missing one or a malformed reply_to is refused and consumes no seq.
    for bad in (orig["seq"], 999999, 0, -1, "1", 1.5, True, BIG):
        resp = api.post(f"/rooms/{room['id']}/messages", json={"body": "re", "reply_to": bad}, headers=member.headers)
        assert_error(resp, 422, "validation_failed", "reply_to")
    assert send(api, member, room["id"], "next")["seq"] == reply["seq"] + 1


# -- read markers --------------------------------------------------------------------------

def test_read_marker_moves_forward_only_and_counts_what_is_left(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    rid = room["id"]
    for i in range(4):
        send(api, owner, rid, f"m{i}" + (f" @{member.username}" if i in (1, 3) else ""))
    url = f"/rooms/{rid}/read"
    state = api.post(url, json={"seq": 2}, headers=member.headers)
    assert state.status_code == 200, state.text
    assert state.json() == {"room_id": rid, "last_read_seq": 2, "unread_count": 2, "mention_count": 1}
    back = api.post(url, json={"seq": 1}, headers=member.headers).json()
    assert back == {"room_id": rid, "last_read_seq": 2, "unread_count": 2, "mention_count": 1}
    # A deleted mention no longer counts; its tombstone still does, as unread.
    assert api.delete(f"/rooms/{rid}/messages/4", headers=owner.headers).status_code == 200
    assert api.post(url, json={"seq": 0}, headers=member.headers).json()["mention_count"] == 0
    # An edit that adds a mention counts it, one that drops it again does not.
    for body, count in ((f"m2 @{member.username}", 1), ("m2", 0)):
        assert api.patch(f"/rooms/{rid}/messages/3", json={"body": body}, headers=owner.headers).status_code == 200
        got = api.post(url, json={"seq": 0}, headers=member.headers).json()
        assert (got["unread_count"], got["mention_count"]) == (2, count), body
    past = api.post(url, json={"seq": BIG - 1}, headers=member.headers).json()
    assert past == {"room_id": rid, "last_read_seq": 4, "unread_count": 0, "mention_count": 0}
    # The sender's own message is read by them.
    assert api.post(url, json={"seq": 0}, headers=owner.headers).json()["unread_count"] == 0
    for bad in ({"seq": -1}, {"seq": BIG}, {"seq": "3"}, {"seq": 1.5}, {"seq": True}, {}):
        assert_error(api.post(url, json=bad, headers=member.headers), 422, "validation_failed", "seq")


def test_rooms_carry_the_callers_read_state(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    rid = room["id"]
    for i in range(3):
        send(api, owner, rid, f"hi @{member.username} {i}")
    api.post(f"/rooms/{rid}/read", json={"seq": 1}, headers=member.headers)
    one = api.get(f"/rooms/{rid}", headers=member.headers).json()
    assert (one["last_seq"], one["last_read_seq"], one["unread_count"], one["mention_count"]) == (3, 1, 2, 2)
    listed = {r["id"]: r for r in api.get("/rooms", params={"scope": "joined"}, headers=member.headers).json()["items"]}
    assert listed[rid]["unread_count"] == 2 and listed[rid]["mention_count"] == 2
    mine = api.get(f"/rooms/{rid}", headers=owner.headers).json()
    assert mine["unread_count"] == 0 and mine["last_read_seq"] == 3
    # Seen from outside, a public room has no read state at all.
    outside = api.get(f"/rooms/{rid}", headers=make_user(api).headers).json()
    assert outside["id"] == rid and not {"last_seq", "last_read_seq", "unread_count", "mention_count"} & set(outside)


# -- search ------------------------------------------------------------------------------

def test_search_finds_the_callers_messages_only(api: httpx.Client, trio: Any) -> None:
    owner, member, room = trio
    word = unique("zebra")
    hit = send(api, owner, room["id"], f"the {word} crossed the road")
    send(api, owner, room["id"], "nothing to see")
    secret = make_room(api, owner, is_private=True)
    send(api, owner, secret["id"], f"a private {word}")
    resp = api.get("/search", params={"q": word}, headers=member.headers)
    assert resp.status_code == 200, resp.text
    page = resp.json()
    assert [i["message"]["id"] for i in page["items"]] == [hit["id"]] and page["next_cursor"] is None
    item = page["items"][0]
    assert item["room_id"] == room["id"] and word in item["snippet"]
    start, end = item["highlights"][0]
    assert item["snippet"][start:end] == word
    mine = api.get("/search", params={"q": word}, headers=owner.headers).json()["items"]
    assert len(mine) == 2
    only = api.get("/search", params={"q": word, "room_id": secret["id"]}, headers=owner.headers).json()["items"]
    assert [i["room_id"] for i in only] == [secret["id"]]
    paged = api.get("/search", params={"q": word, "limit": 1}, headers=owner.headers).json()
    assert len(paged["items"]) == 1 and paged["next_cursor"]
    rest = api.get("/search", params={"q": word, "limit": 1, "cursor": paged["next_cursor"]},
                   headers=owner.headers).json()
    assert len(rest["items"]) == 1 and rest["items"][0]["message"]["id"] != paged["items"][0]["message"]["id"]
    # A deleted message is not found.
    api.delete(f"/rooms/{room['id']}/messages/{hit['seq']}", headers=owner.headers)
    assert api.get("/search", params={"q": word, "room_id": room["id"]}, headers=owner.headers).json()["items"] == []


def test_search_refuses_what_it_cannot_search(api: httpx.Client, trio: Any) -> None:
    owner, _, room = trio
    for params in ({}, {"q": ""}, {"q": "x" * 201}, {"q": "!!! ..."}, {"q": "a", "limit": 0},
                   {"q": "a", "cursor": "garbage"}):
        assert_error(api.get("/search", params=params, headers=owner.headers), 422, "validation_failed")
    stranger = make_user(api)
    assert_error(api.get("/search", params={"q": "a", "room_id": room["id"]}, headers=stranger.headers), 403,
                 "not_member")
    assert_error(api.get("/search", params={"q": "a", "room_id": "nope"}, headers=stranger.headers), 404,
                 "room_not_found")
    assert api.get("/search", params={"q": "a"}).status_code == 401
    assert api.get("/search", params={"q": "x" * 200}, headers=owner.headers).status_code == 200
