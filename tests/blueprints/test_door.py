"""Bad input at the door (issue 9, points 1 and 7): 4xx in the envelope, never a 500.

Every reproduction of the issue is here, against the real server: seqs past PostgreSQL's
bigint, forged cursors, empty bodies, and text PostgreSQL cannot store (NUL, lone
surrogates) in every field and query parameter.
"""

from __future__ import annotations

import base64
import json

import httpx
import orjson
import pytest

from tests.checks import assert_error
from tests.factories import TestUser, make_room, make_user, unique

BIG = "100000000000000000000"  # 10**20: far past 2**63-1
BIGINT_MAX = 2**63 - 1


@pytest.fixture
def member(api: httpx.Client) -> tuple[TestUser, dict]:
    user = make_user(api)
    return user, make_room(api, user)


# -- numbers past the bigint range -------------------------------------------------

@pytest.mark.parametrize("param", ["after", "before"])
@pytest.mark.parametrize("value", [BIG, str(2**63), str(2**64 - 1), "9" * 5000])
def test_huge_history_bounds_are_422(api: httpx.Client, member, param: str, value: str) -> None:
    user, room = member
    resp = api.get(f"/rooms/{room['id']}/messages", params={param: value}, headers=user.headers)
    assert_error(resp, 422, "validation_failed", param)


def test_largest_bounds_are_answered(api: httpx.Client, member) -> None:
    user, room = member
    api.post(f"/rooms/{room['id']}/messages", json={"body": "one"}, headers=user.headers)
    resp = api.get(f"/rooms/{room['id']}/messages", params={"before": str(BIGINT_MAX)}, headers=user.headers)
    assert resp.status_code == 200 and [m["body"] for m in resp.json()["items"]] == ["one"]
    resp = api.get(f"/rooms/{room['id']}/messages", params={"after": str(BIGINT_MAX - 1)}, headers=user.headers)
    assert resp.status_code == 200 and resp.json()["items"] == []
    assert_error(api.get(f"/rooms/{room['id']}/messages", params={"after": str(BIGINT_MAX)}, headers=user.headers),
                 422, "validation_failed", "after")


def test_huge_message_seq_is_422_and_largest_is_404(api: httpx.Client, member) -> None:
    user, room = member
    assert_error(api.get(f"/rooms/{room['id']}/messages/{BIG}", headers=user.headers), 422, "validation_failed", "seq")
    assert_error(api.get(f"/rooms/{room['id']}/messages/{BIGINT_MAX}", headers=user.headers), 404, "message_not_found")


def test_huge_numbers_in_ignored_body_fields_are_harmless(api: httpx.Client, member) -> None:
    """Only the fields a route reads are judged (and documented); extra keys are ignored."""
    user, room = member
    raw = b'{"body": "x", "n": 18446744073709551615, "m": 100000000000000000000}'
    resp = api.post(f"/rooms/{room['id']}/messages", content=raw,
                    headers={**user.headers, "content-type": "application/json"})
    assert resp.status_code == 201, resp.text


# -- forged cursors -----------------------------------------------------------------

def forge(position: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


FORGED = [
    "eyJjIjoiMjAyNC0wMS0wMVQwMDowMDowMCswMDowMCIsImkiOjF9",  # the issue's: {"c": "...", "i": 1}
    forge({"c": "2024-01-01T00:00:00+00:00", "i": None}),
    forge({"c": "2024-01-01T00:00:00+00:00", "i": ["x"]}),
    forge({"c": "2024-01-01T00:00:00+00:00", "i": "not-a-uuid"}),
    forge({"c": 1, "i": "0190a0a0-0000-7000-8000-000000000000"}),
    forge({"c": "2024-01-01T00:00:00", "i": "0190a0a0-0000-7000-8000-000000000000"}),  # no zone
    forge({"j": "2024-01-01T00:00:00+00:00", "i": 18446744073709551615}),
    forge({"j": "2024-01-01T00:00:00+00:00", "i": -1}),
    forge({"j": "2024-01-01T00:00:00+00:00", "i": 1.5}),
    forge({"j": "2024-01-01T00:00:00+00:00", "i": True}),
    forge({"j": {"a": 1}, "i": 1}),
    forge({"u": 1}), forge({"u": None}), forge({"u": "a\u0000b"}), forge({"u": "x" * 100}), forge({"u": ["a"]}),
    forge({}), forge([1, 2]), forge("text"), forge(None), forge({"c": "x", "i": "y", "extra": 1}),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(), "%%%", "a" * 5000,
]


@pytest.mark.parametrize("cursor", FORGED)
def test_forged_cursors_are_422_on_every_list(api: httpx.Client, member, cursor: str) -> None:
    user, room = member
    for path, params in (("/rooms", {}), ("/rooms", {"scope": "public"}), (f"/rooms/{room['id']}/members", {}),
                         ("/users", {})):
        resp = api.get(path, params={**params, "cursor": cursor}, headers=user.headers)
        assert_error(resp, 422, "validation_failed", "cursor")


def test_a_cursor_of_another_list_is_422(api: httpx.Client, member) -> None:
    user, _room = member
    members_cursor = forge({"j": "2024-01-01T00:00:00+00:00", "i": BIGINT_MAX})
    users_cursor = forge({"u": "abc"})
    for path, cursor in (("/rooms", members_cursor), ("/users", members_cursor), ("/rooms", users_cursor)):
        assert_error(api.get(path, params={"cursor": cursor}, headers=user.headers), 422, "validation_failed", "cursor")


def test_real_cursors_still_walk(api: httpx.Client) -> None:
    user = make_user(api)
    for _ in range(3):
        make_room(api, user)
    first = api.get("/rooms", params={"limit": 2}, headers=user.headers).json()
    assert first["next_cursor"]
    second = api.get("/rooms", params={"limit": 2, "cursor": first["next_cursor"]}, headers=user.headers)
    assert second.status_code == 200 and second.json()["items"]


# -- empty and non-object bodies: 400 on every JSON route -----------------------------

def json_routes(user: TestUser, room: dict) -> list[tuple[str, str]]:
    return [("POST", "/auth/register"), ("POST", "/auth/login"), ("POST", "/auth/refresh"),
            ("POST", "/auth/logout"), ("POST", "/rooms"), ("PATCH", f"/rooms/{room['id']}"),
            ("POST", f"/rooms/{room['id']}/members"), ("PATCH", f"/rooms/{room['id']}/members/{user.id}"),
            ("POST", f"/rooms/{room['id']}/messages")]


@pytest.mark.parametrize("raw", [b"", b"   ", b"null", b"[]", b"1"])
def test_empty_or_non_object_body_is_400_everywhere(api: httpx.Client, member, raw: bytes) -> None:
    user, room = member
    for method, path in json_routes(user, room):
        resp = api.request(method, path, content=raw, headers={**user.headers, "content-type": "application/json"})
        assert_error(resp, 400, "malformed_json")


# -- text PostgreSQL cannot store: 422 naming the field -------------------------------

BAD_TEXT = ["a\u0000b", "\ud800", "x\udfffy", "\udc00\ud800"]


def raw_json(obj: dict) -> bytes:
    """json.dumps escapes lone surrogates as \\udXXX (what a client's encoder sends)."""
    return json.dumps(obj).encode()


@pytest.mark.parametrize("bad", BAD_TEXT, ids=["nul", "high", "low", "reversed"])
def test_unstorable_text_is_422_in_every_body_field(api: httpx.Client, member, bad: str) -> None:
    user, room = member
    other = make_user(api)
    cases = [
        ("POST", "/auth/register", {"username": bad, "password": "long enough pw"}, "username"),
        ("POST", "/auth/register", {"username": unique(), "password": "pw" + bad + "longer"}, "password"),
        ("POST", "/auth/register", {"username": unique(), "password": "long enough", "display_name": bad},
         "display_name"),
        ("POST", "/auth/login", {"username": bad, "password": "whatever1"}, "username"),
        ("POST", "/auth/login", {"username": user.username, "password": bad}, "password"),
        ("POST", "/auth/refresh", {"refresh_token": bad}, "refresh_token"),
        ("POST", "/rooms", {"name": "n" + bad}, "name"),
        ("POST", "/rooms", {"name": "ok", "topic": bad}, "topic"),
        ("POST", "/rooms", {"name": "ok", "member_ids": [other.id, bad]}, "member_ids.1"),
        ("PATCH", f"/rooms/{room['id']}", {"name": bad}, "name"),
        ("PATCH", f"/rooms/{room['id']}", {"topic": bad}, "topic"),
        ("POST", f"/rooms/{room['id']}/members", {"user_id": bad}, "user_id"),
        ("POST", f"/rooms/{room['id']}/messages", {"body": "hi" + bad + "there"}, "body"),
        ("POST", f"/rooms/{room['id']}/messages", {"body": "hi", "client_id": bad}, "client_id"),
        ("POST", f"/rooms/{room['id']}/messages", {"body": "hi", "extra": {"deep": ["ok", bad]}}, "extra.deep.1"),
    ]
    for method, path, obj, field in cases:
        resp = api.request(method, path, content=raw_json(obj),
                           headers={**user.headers, "content-type": "application/json"})
        err = assert_error(resp, 422, "validation_failed")
        if field is not None:
            assert field in err["details"]["fields"], (path, obj, err)
    # Nothing reached the room.
    hist = api.get(f"/rooms/{room['id']}/messages", headers=user.headers).json()
    assert hist["items"] == []


def test_a_strange_key_is_just_an_ignored_field(api: httpx.Client, member) -> None:
    """Keys are looked up, never stored: a NUL in an unknown key's name harms nothing."""
    user, room = member
    resp = api.post(f"/rooms/{room['id']}/messages", content=b'{"body": "hi", "x\\u0000y": 1}',
                    headers={**user.headers, "content-type": "application/json"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["body"] == "hi"


def test_raw_surrogate_bytes_are_malformed_json(api: httpx.Client, member) -> None:
    user, room = member
    raw = b'{"body": "\xed\xa0\x80"}'  # a surrogate encoded as UTF-8: not UTF-8, so not JSON
    resp = api.post(f"/rooms/{room['id']}/messages", content=raw,
                    headers={**user.headers, "content-type": "application/json"})
    assert_error(resp, 400, "malformed_json")


def test_valid_astral_text_is_fine(api: httpx.Client, member) -> None:
    user, room = member
    resp = api.post(f"/rooms/{room['id']}/messages", content=b'{"body": "\\ud83d\\ude00 ok"}',
                    headers={**user.headers, "content-type": "application/json"})
    assert resp.status_code == 201 and resp.json()["body"] == "\U0001F600 ok"


@pytest.mark.parametrize("path_fmt,param", [("/rooms", "q"), ("/users", "q"), ("/rooms", "scope"),
                                            ("/rooms", "cursor"), ("/rooms", "limit"),
                                            ("/rooms/{room}/messages", "after"),
                                            ("/rooms/{room}/members/{user}", "ban")])
def test_nul_in_query_strings_is_422(api: httpx.Client, member, path_fmt: str, param: str) -> None:
    user, room = member
    path = path_fmt.format(room=room["id"], user=user.id)
    method = "DELETE" if "members/" in path else "GET"
    resp = api.request(method, path + f"?{param}=a%00b", headers=user.headers)
    assert_error(resp, 422, "validation_failed", param)
    # A NUL in a parameter's name as well.
    resp = api.get("/rooms?x%00y=1", headers=user.headers)
    assert_error(resp, 422, "validation_failed")


@pytest.mark.parametrize("method", ["PUT", "TRACE", "CONNECT"])
def test_405_carries_allow(api: httpx.Client, method: str) -> None:
    """RFC 9110: a 405 lists what is allowed, also for methods the router does not know."""
    resp = api.request(method, "/rooms")
    assert resp.status_code == 405
    allow = {m.strip() for m in resp.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allow and method not in allow
    assert resp.json()["error"]["code"] == "method_not_allowed"
    resp = api.request(method, "/rooms/x/messages/1")
    assert resp.status_code == 405 and "GET" in resp.headers["allow"]
