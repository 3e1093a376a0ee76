"""Rooms over HTTP, through the real server process: CRUD, join/leave, visibility, search, pages."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from app.pagination import encode_cursor
from tests.checks import MEMBERSHIP_KEYS, error_code, walk
from tests.factories import TestUser, make_room, make_user, unique

ROOM_KEYS = {"id", "name", "topic", "is_private", "owner_id", "created_at", "member_count", "my_role"}


def test_create_room_and_read_it_back(api: httpx.Client) -> None:
    owner = make_user(api)
    room = make_room(api, owner, name="  Lobby  ", topic="say hi")
    assert set(room) == ROOM_KEYS
    assert room["name"] == "Lobby" and room["topic"] == "say hi" and room["is_private"] is False
    assert room["owner_id"] == owner.id and room["my_role"] == "owner" and room["member_count"] == 1
    assert room["created_at"].endswith("Z") and len(room["created_at"]) == len("2024-01-01T00:00:00.000Z")
    got = api.get(f"/rooms/{room['id']}", headers=owner.headers)
    # A member's GET also carries their read state (issue 12, test_lifecycle_routes.py).
    assert got.status_code == 200 and {k: got.json()[k] for k in ROOM_KEYS} == room
    assert make_room(api, owner)["topic"] == ""


def test_create_room_with_members(api: httpx.Client) -> None:
    owner, a, b = make_user(api), make_user(api), make_user(api)
    room = make_room(api, owner, is_private=True, member_ids=[a.id, b.id, a.id])
    assert room["member_count"] == 3 and room["is_private"] is True
    seen = api.get(f"/rooms/{room['id']}", headers=a.headers).json()
    assert seen["my_role"] == "member" and seen["member_count"] == 3


@pytest.mark.parametrize("bad", [str(uuid.uuid4()), "not-a-user-id"])
def test_create_room_with_unknown_member_is_404_and_creates_nothing(api: httpx.Client, bad: str) -> None:
    owner, a = make_user(api), make_user(api)
    name = unique("ghost-")
    resp = api.post("/rooms", json={"name": name, "member_ids": [a.id, bad]}, headers=owner.headers)
    assert error_code(resp, 404) == "user_not_found"
    assert walk(api, owner, "/rooms", q=name) == []
    assert walk(api, a, "/rooms", q=name) == []


@pytest.mark.parametrize("payload,field", [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 65}, "name"), ({"name": 42}, "name"),
    ({"name": "ok", "topic": "t" * 257}, "topic"), ({"name": "ok", "is_private": "maybe"}, "is_private"),
    ({"name": "ok", "member_ids": "everyone"}, "member_ids"), ({"name": "nul\x00"}, "name"),
    ({"name": "ok", "topic": "nul\x00"}, "topic"),
])
def test_create_room_validation(api: httpx.Client, payload: dict, field: str) -> None:
    owner = make_user(api)
    resp = api.post("/rooms", json=payload, headers=owner.headers)
    assert error_code(resp, 422) == "validation_failed"
    assert field in resp.json()["error"]["details"]["fields"]


def test_create_room_bad_bodies_and_no_token(api: httpx.Client) -> None:
    owner = make_user(api)
    for raw in (b"{not json", b"[1, 2]", b'"name"'):
        resp = api.post("/rooms", content=raw, headers={**owner.headers, "Content-Type": "application/json"})
        assert error_code(resp, 400) == "malformed_json"
    assert api.post("/rooms", json={"name": "x"}).status_code == 401
    assert api.get("/rooms").status_code == 401
    assert api.get(f"/rooms/{uuid.uuid4()}").status_code == 401
    assert make_room(api, owner, name="x" * 64)["name"] == "x" * 64


def test_private_room_is_invisible_to_non_members(api: httpx.Client) -> None:
    owner, outsider, member = make_user(api), make_user(api), make_user(api)
    room = make_room(api, owner, name=unique("secret-"), is_private=True, member_ids=[member.id])
    rid, h = room["id"], outsider.headers
    missing = api.get(f"/rooms/{uuid.uuid4()}", headers=h)
    assert error_code(missing, 404) == "room_not_found"
    calls = [
        api.get(f"/rooms/{rid}", headers=h),
        api.patch(f"/rooms/{rid}", json={"name": "mine"}, headers=h),
        api.delete(f"/rooms/{rid}", headers=h),
        api.post(f"/rooms/{rid}/join", headers=h),
        api.post(f"/rooms/{rid}/leave", headers=h),
        api.get(f"/rooms/{rid}/members", headers=h),
        api.post(f"/rooms/{rid}/members", json={"user_id": outsider.id}, headers=h),
        api.patch(f"/rooms/{rid}/members/{member.id}", json={"role": "admin"}, headers=h),
        api.delete(f"/rooms/{rid}/members/{member.id}", headers=h),
    ]
    for resp in calls:
        assert resp.status_code == 404 and resp.json() == missing.json(), (resp.request.method, resp.request.url)
    assert walk(api, outsider, "/rooms", scope="public", q=room["name"]) == []
    assert walk(api, outsider, "/rooms", q=room["name"]) == []
    assert [r["id"] for r in walk(api, member, "/rooms", q=room["name"])] == [rid]


def test_public_room_non_member_gets_403_on_member_calls(api: httpx.Client) -> None:
    owner, outsider = make_user(api), make_user(api)
    room = make_room(api, owner)
    rid, h = room["id"], outsider.headers
    seen = api.get(f"/rooms/{rid}", headers=h)
    assert seen.status_code == 200 and seen.json()["my_role"] is None and seen.json()["member_count"] == 1
    for resp in (api.get(f"/rooms/{rid}/members", headers=h),
                 api.patch(f"/rooms/{rid}", json={"topic": "x"}, headers=h),
                 api.delete(f"/rooms/{rid}", headers=h),
                 api.post(f"/rooms/{rid}/members", json={"user_id": outsider.id}, headers=h),
                 api.delete(f"/rooms/{rid}/members/{owner.id}", headers=h)):
        assert error_code(resp, 403) == "not_member", (resp.request.method, resp.request.url)
    assert error_code(api.post(f"/rooms/{rid}/leave", headers=h), 404) == "not_member"


@pytest.mark.parametrize("method,path", [
    ("GET", "/rooms/{bad}"), ("PATCH", "/rooms/{bad}"), ("DELETE", "/rooms/{bad}"),
    ("POST", "/rooms/{bad}/join"), ("POST", "/rooms/{bad}/leave"), ("GET", "/rooms/{bad}/members"),
    ("POST", "/rooms/{bad}/members"), ("PATCH", "/rooms/{bad}/members/{bad}"),
    ("DELETE", "/rooms/{bad}/members/{bad}"),
])
def test_malformed_room_ids_are_404(api: httpx.Client, method: str, path: str) -> None:
    user = make_user(api)
    body = {"PATCH": {"role": "admin"} if "members" in path else {"name": "x"}, "POST": {"user_id": user.id}}
    for bad in ("not-a-uuid", "1", "%25", "0" * 40):
        resp = api.request(method, path.format(bad=bad), json=body.get(method), headers=user.headers)
        assert error_code(resp, 404) == "room_not_found"


def test_update_room(api: httpx.Client) -> None:
    owner, admin, member = make_user(api), make_user(api), make_user(api)
    rid = make_room(api, owner, member_ids=[admin.id, member.id])["id"]
    api.patch(f"/rooms/{rid}/members/{admin.id}", json={"role": "admin"}, headers=owner.headers)
    resp = api.patch(f"/rooms/{rid}", json={"name": "Renamed", "topic": "new topic"}, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "Renamed" and resp.json()["topic"] == "new topic"
    assert resp.json()["my_role"] == "admin" and resp.json()["is_private"] is False
    resp = api.patch(f"/rooms/{rid}", json={"is_private": True, "topic": None}, headers=owner.headers)
    assert resp.json()["is_private"] is True and resp.json()["topic"] == "" and resp.json()["name"] == "Renamed"
    assert api.patch(f"/rooms/{rid}", json={}, headers=owner.headers).json()["name"] == "Renamed"
    assert error_code(api.patch(f"/rooms/{rid}", json={"name": "x"}, headers=member.headers), 403) == "forbidden"
    for payload, field in (({"name": ""}, "name"), ({"name": None}, "name"), ({"topic": "t" * 257}, "topic"),
                           ({"is_private": "no"}, "is_private")):
        resp = api.patch(f"/rooms/{rid}", json=payload, headers=owner.headers)
        assert error_code(resp, 422) == "validation_failed" and field in resp.json()["error"]["details"]["fields"]
    assert error_code(api.patch(f"/rooms/{rid}", content=b"[]", headers=owner.headers), 400) == "malformed_json"


def test_delete_room(api: httpx.Client) -> None:
    owner, admin = make_user(api), make_user(api)
    room = make_room(api, owner, member_ids=[admin.id])
    rid = room["id"]
    api.patch(f"/rooms/{rid}/members/{admin.id}", json={"role": "admin"}, headers=owner.headers)
    assert error_code(api.delete(f"/rooms/{rid}", headers=admin.headers), 403) == "forbidden"
    resp = api.delete(f"/rooms/{rid}", headers=owner.headers)
    assert resp.status_code == 204 and resp.content == b""
    assert error_code(api.get(f"/rooms/{rid}", headers=owner.headers), 404) == "room_not_found"
    assert error_code(api.delete(f"/rooms/{rid}", headers=owner.headers), 404) == "room_not_found"
    assert walk(api, admin, "/rooms", q=room["name"]) == []


def test_join_and_leave(api: httpx.Client) -> None:
    owner, user = make_user(api), make_user(api)
    rid = make_room(api, owner)["id"]
    joined = api.post(f"/rooms/{rid}/join", headers=user.headers)
    assert joined.status_code == 200, joined.text
    m = joined.json()
    assert set(m) == MEMBERSHIP_KEYS
    assert m["room_id"] == rid and m["user_id"] == user.id and m["username"] == user.username
    assert m["role"] == "member" and m["joined_at"].endswith("Z")
    again = api.post(f"/rooms/{rid}/join", headers=user.headers)
    assert again.status_code == 200 and again.json() == m
    assert api.get(f"/rooms/{rid}", headers=owner.headers).json()["member_count"] == 2
    assert api.post(f"/rooms/{rid}/leave", headers=user.headers).status_code == 204
    assert error_code(api.post(f"/rooms/{rid}/leave", headers=user.headers), 404) == "not_member"
    assert api.get(f"/rooms/{rid}", headers=owner.headers).json()["member_count"] == 1
    private = make_room(api, owner, is_private=True)["id"]
    assert error_code(api.post(f"/rooms/{private}/join", headers=user.headers), 404) == "room_not_found"


def test_owner_leaving_hands_over_and_the_last_one_out_deletes(api: httpx.Client) -> None:
    owner, m1, a1, a2 = make_user(api), make_user(api), make_user(api), make_user(api)
    rid = make_room(api, owner)["id"]
    for u in (m1, a1, a2):
        assert api.post(f"/rooms/{rid}/join", headers=u.headers).status_code == 200
    for u in (a2, a1):
        assert api.patch(f"/rooms/{rid}/members/{u.id}", json={"role": "admin"}, headers=owner.headers).status_code == 200
    expected = [(owner, a1), (a1, a2), (a2, m1)]  # oldest admin first, then the oldest member
    for leaver, heir in expected:
        assert api.post(f"/rooms/{rid}/leave", headers=leaver.headers).status_code == 204
        room = api.get(f"/rooms/{rid}", headers=heir.headers).json()
        assert room["owner_id"] == heir.id and room["my_role"] == "owner"
    assert api.post(f"/rooms/{rid}/leave", headers=m1.headers).status_code == 204
    assert error_code(api.get(f"/rooms/{rid}", headers=m1.headers), 404) == "room_not_found"


def test_list_scopes_and_literal_search(api: httpx.Client) -> None:
    user, other = make_user(api), make_user(api)
    tag = uuid.uuid4().hex[:8]
    percent = make_room(api, user, name=f"{tag} 100% off")
    underscore = make_room(api, user, name=f"{tag} snake_case")
    plain = make_room(api, user, name=f"{tag} 1000 offers, lineXcount", is_private=True)
    joined_public = make_room(api, other, name=f"{tag} Other's")
    api.post(f"/rooms/{joined_public['id']}/join", headers=user.headers)

    def names(**params: str) -> list[str]:
        return [r["name"] for r in walk(api, user, "/rooms", **params)]

    assert names(q=tag) == [joined_public["name"], plain["name"], underscore["name"], percent["name"]]
    assert names(q=tag.upper(), scope="joined") == names(q=tag)
    assert names(q="%", scope="joined") == [percent["name"]]
    assert names(q="e_c") == [underscore["name"]]
    assert names(q=f"{tag} 100%") == [percent["name"]]
    assert names(q="_") == [underscore["name"]]
    assert names(q=f"{tag} SNAKE") == [underscore["name"]]
    public = walk(api, other, "/rooms", scope="public", q=tag)
    assert [r["name"] for r in public] == [joined_public["name"], underscore["name"], percent["name"]]
    assert [r["my_role"] for r in public] == ["owner", None, None]
    assert error_code(api.get("/rooms", params={"scope": "all"}, headers=user.headers), 422) == "validation_failed"
    assert error_code(api.get("/rooms", params={"q": "a\x00"}, headers=user.headers), 422) == "validation_failed"


def test_pagination_walks_every_room_once(api: httpx.Client) -> None:
    user = make_user(api)
    made = [make_room(api, user)["id"] for _ in range(5)]
    one_by_one = walk(api, user, "/rooms", limit="1")
    assert [r["id"] for r in one_by_one] == list(reversed(made))  # newest first, each exactly once
    first = api.get("/rooms", params={"limit": "2"}, headers=user.headers).json()
    assert len(first["items"]) == 2 and isinstance(first["next_cursor"], str)
    everything = api.get("/rooms", params={"limit": "1000"}, headers=user.headers)
    assert everything.status_code == 200 and len(everything.json()["items"]) == 5
    assert everything.json()["next_cursor"] is None
    for bad in ("0", "-1", "ten"):
        resp = api.get("/rooms", params={"limit": bad}, headers=user.headers)
        assert error_code(resp, 422) == "validation_failed" and "limit" in resp.json()["error"]["details"]["fields"]
    for cursor in ("!!!", "bm90IGpzb24", encode_cursor({"c": "yesterday", "i": "x"}), encode_cursor({"x": 1})):
        resp = api.get("/rooms", params={"cursor": cursor}, headers=user.headers)
        assert error_code(resp, 422) == "validation_failed" and "cursor" in resp.json()["error"]["details"]["fields"]


def test_openapi_documents_the_room_routes(api: httpx.Client) -> None:
    spec = api.get("/docs/openapi.json").json()
    paths = spec["paths"]
    for path in ("/rooms", "/rooms/{room_id}", "/rooms/{room_id}/join", "/rooms/{room_id}/leave",
                 "/rooms/{room_id}/members", "/rooms/{room_id}/members/{user_id}"):
        assert path in paths, path
    create = paths["/rooms"]["post"]
    assert "201" in create["responses"] and "422" in create["responses"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert schema["required"] == ["name"]
    # The name's limits (1-64 once stripped, no control characters) are declared as a pattern.
    name = re.compile(schema["properties"]["name"]["pattern"])
    assert name.search("x" * 64) and name.search("  padded  ") and name.search("\u00e9t\u00e9 \U0001F600")
    assert not any(name.search(bad) for bad in ("", "   ", "x" * 65, "a\x00b", "a\nb", "a\x7fb"))
    assert set(paths["/rooms/{room_id}/members/{user_id}"]) >= {"patch", "delete"}
