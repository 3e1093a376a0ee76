"""Members over HTTP: the list, adding, roles, kicks and bans, and what live connections are told."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.realtime import events
from app.store import member_sets
from app.store.keys import Keys
from app.serialize import loads
from tests.checks import MEMBERSHIP_KEYS, error_code, walk
from tests.factories import TestUser, make_room, make_user


def room_with_admin(api: httpx.Client) -> tuple[str, TestUser, TestUser, TestUser]:
    """A public room with an owner, an admin and a plain member (joined in that order)."""
    owner, admin, member = make_user(api), make_user(api), make_user(api)
    rid = make_room(api, owner, member_ids=[admin.id, member.id])["id"]
    resp = api.patch(f"/rooms/{rid}/members/{admin.id}", json={"role": "admin"}, headers=owner.headers)
    assert resp.status_code == 200, resp.text
    return rid, owner, admin, member


def test_member_list_in_join_order_with_pages(api: httpx.Client) -> None:
    rid, owner, admin, member = room_with_admin(api)
    late = make_user(api)
    api.post(f"/rooms/{rid}/join", headers=late.headers)
    items = walk(api, member, f"/rooms/{rid}/members", limit="1")
    assert [m["user_id"] for m in items] == [owner.id, admin.id, member.id, late.id]
    assert [m["role"] for m in items] == ["owner", "admin", "member", "member"]
    assert all(set(m) == MEMBERSHIP_KEYS and m["room_id"] == rid for m in items)
    assert items[0]["username"] == owner.username
    page = api.get(f"/rooms/{rid}/members", headers=member.headers).json()
    assert page["items"] == items and page["next_cursor"] is None
    for params in ({"limit": "0"}, {"cursor": "garbage!"}):
        assert error_code(api.get(f"/rooms/{rid}/members", params=params, headers=member.headers), 422) == "validation_failed"


def test_add_member(api: httpx.Client) -> None:
    rid, owner, admin, member = room_with_admin(api)
    newcomer, another = make_user(api), make_user(api)
    resp = api.post(f"/rooms/{rid}/members", json={"user_id": newcomer.id}, headers=admin.headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["user_id"] == newcomer.id and resp.json()["role"] == "member"
    again = api.post(f"/rooms/{rid}/members", json={"user_id": newcomer.id}, headers=owner.headers)
    assert again.status_code == 200 and again.json() == resp.json()  # already a member: unchanged
    refused = api.post(f"/rooms/{rid}/members", json={"user_id": another.id}, headers=member.headers)
    assert error_code(refused, 403) == "forbidden"
    for bad in (str(uuid.uuid4()), "nobody"):
        resp = api.post(f"/rooms/{rid}/members", json={"user_id": bad}, headers=owner.headers)
        assert error_code(resp, 404) == "user_not_found"
    for payload in ({}, {"user_id": 7}):
        assert error_code(api.post(f"/rooms/{rid}/members", json=payload, headers=owner.headers), 422) == "validation_failed"
    assert api.get(f"/rooms/{rid}", headers=owner.headers).json()["member_count"] == 4


def test_added_member_sees_the_private_room(api: httpx.Client) -> None:
    owner, guest = make_user(api), make_user(api)
    rid = make_room(api, owner, is_private=True)["id"]
    assert error_code(api.get(f"/rooms/{rid}", headers=guest.headers), 404) == "room_not_found"
    assert api.post(f"/rooms/{rid}/members", json={"user_id": guest.id}, headers=owner.headers).status_code == 201
    room = api.get(f"/rooms/{rid}", headers=guest.headers)
    assert room.status_code == 200 and room.json()["my_role"] == "member"
    assert [r["id"] for r in walk(api, guest, "/rooms")] == [rid]


def test_change_role(api: httpx.Client) -> None:
    rid, owner, admin, member = room_with_admin(api)
    outsider = make_user(api)
    url = f"/rooms/{rid}/members/{member.id}"
    resp = api.patch(url, json={"role": "admin"}, headers=owner.headers)
    assert resp.status_code == 200 and resp.json()["role"] == "admin" and resp.json()["user_id"] == member.id
    assert api.get(f"/rooms/{rid}", headers=member.headers).json()["my_role"] == "admin"
    assert api.patch(url, json={"role": "member"}, headers=owner.headers).json()["role"] == "member"
    assert error_code(api.patch(url, json={"role": "admin"}, headers=admin.headers), 403) == "forbidden"
    own = api.patch(f"/rooms/{rid}/members/{owner.id}", json={"role": "member"}, headers=owner.headers)
    assert error_code(own, 403) == "forbidden"
    for role in ("owner", "king", None):
        resp = api.patch(url, json={"role": role}, headers=owner.headers)
        assert error_code(resp, 422) == "validation_failed" and "role" in resp.json()["error"]["details"]["fields"]
    assert error_code(api.patch(f"/rooms/{rid}/members/{outsider.id}", json={"role": "admin"},
                                headers=owner.headers), 404) == "not_member"
    for bad in (str(uuid.uuid4()), "who"):
        resp = api.patch(f"/rooms/{rid}/members/{bad}", json={"role": "admin"}, headers=owner.headers)
        assert error_code(resp, 404) == "user_not_found"


def test_kick_rules(api: httpx.Client) -> None:
    rid, owner, admin, member = room_with_admin(api)
    second_admin = make_user(api)
    api.post(f"/rooms/{rid}/join", headers=second_admin.headers)
    api.patch(f"/rooms/{rid}/members/{second_admin.id}", json={"role": "admin"}, headers=owner.headers)
    base = f"/rooms/{rid}/members"
    assert error_code(api.delete(f"{base}/{owner.id}", headers=admin.headers), 403) == "forbidden"
    assert error_code(api.delete(f"{base}/{second_admin.id}", headers=admin.headers), 403) == "forbidden"
    assert error_code(api.delete(f"{base}/{admin.id}", headers=member.headers), 403) == "forbidden"
    assert error_code(api.delete(f"{base}/{owner.id}", headers=owner.headers), 403) == "forbidden"
    assert error_code(api.delete(f"{base}/{member.id}", params={"ban": "perhaps"}, headers=admin.headers), 422) == "validation_failed"
    assert error_code(api.delete(f"{base}/{uuid.uuid4()}", headers=admin.headers), 404) == "user_not_found"
    assert error_code(api.delete(f"{base}/not-an-id", headers=admin.headers), 404) == "user_not_found"

    kicked = api.delete(f"{base}/{member.id}", headers=admin.headers)
    assert kicked.status_code == 204 and kicked.content == b""
    assert error_code(api.delete(f"{base}/{member.id}", headers=admin.headers), 404) == "not_member"
    assert error_code(api.get(f"{base}", headers=member.headers), 403) == "not_member"
    assert api.post(f"/rooms/{rid}/join", headers=member.headers).status_code == 200  # a kick is not a ban
    assert api.delete(f"{base}/{second_admin.id}", params={"ban": "false"}, headers=owner.headers).status_code == 204
    ids = [m["user_id"] for m in walk(api, owner, base)]
    assert ids == [owner.id, admin.id, member.id]


def test_ban_keeps_a_user_out_until_re_added(api: httpx.Client) -> None:
    rid, owner, admin, member = room_with_admin(api)
    stranger = make_user(api)
    assert api.delete(f"/rooms/{rid}/members/{member.id}", params={"ban": "true"}, headers=admin.headers).status_code == 204
    assert error_code(api.post(f"/rooms/{rid}/join", headers=member.headers), 403) == "banned"
    assert error_code(api.get(f"/rooms/{rid}/members", headers=member.headers), 403) == "not_member"
    assert member.id not in [m["user_id"] for m in walk(api, owner, f"/rooms/{rid}/members")]
    # Banning someone who never joined keeps them out too.
    assert api.delete(f"/rooms/{rid}/members/{stranger.id}", params={"ban": "true"}, headers=owner.headers).status_code == 204
    assert error_code(api.post(f"/rooms/{rid}/join", headers=stranger.headers), 403) == "banned"
    readd = api.post(f"/rooms/{rid}/members", json={"user_id": member.id}, headers=admin.headers)
    assert readd.status_code == 201 and readd.json()["role"] == "member"
    assert api.post(f"/rooms/{rid}/join", headers=member.headers).status_code == 200
    assert api.get(f"/rooms/{rid}", headers=owner.headers).json()["member_count"] == 3


async def _events_until(pubsub: Any, route: str) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(500):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert msg is not None, f"no event on {route}; saw {list(seen)}"
        r, _, frame = events.decode(msg["data"])
        if r[:2] in ("j:", "l:"):  # drop the membership version: j:<room>:<user>:<version>
            r = r.rpartition(":")[0]
        seen[r] = loads(frame)
        if r == route:
            return seen
    raise AssertionError(f"no event on {route}")


@pytest.mark.parametrize("ban", ["false", "true"])
async def test_kick_updates_redis_and_tells_live_connections(api: httpx.Client, redis: Redis, keys: Keys,
                                                             ban: str) -> None:
    owner, member = make_user(api), make_user(api)
    rid = make_room(api, owner)["id"]
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events_channel())
    await pubsub.get_message(timeout=5)
    try:
        assert api.post(f"/rooms/{rid}/join", headers=member.headers).status_code == 200
        joined = await _events_until(pubsub, f"j:{rid}:{member.id}")
        assert joined[f"j:{rid}:{member.id}"]["type"] == "member_joined"
        assert joined[f"j:{rid}:{member.id}"]["membership"]["user_id"] == member.id
        assert await member_sets.is_member(redis, keys, rid, member.id) is True

        resp = api.delete(f"/rooms/{rid}/members/{member.id}", params={"ban": ban}, headers=owner.headers)
        assert resp.status_code == 204
        assert await member_sets.is_member(redis, keys, rid, member.id) is False
        assert await member_sets.is_member(redis, keys, rid, owner.id) is True
        left = await _events_until(pubsub, f"l:{rid}:{member.id}")
        assert left[f"l:{rid}:{member.id}"] == {"type": "member_left", "room_id": rid, "user_id": member.id}
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()


async def test_role_change_and_delete_events(api: httpx.Client, redis: Redis, keys: Keys) -> None:
    rid, owner, admin, member = room_with_admin(api)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events_channel())
    await pubsub.get_message(timeout=5)
    try:
        api.patch(f"/rooms/{rid}/members/{member.id}", json={"role": "admin"}, headers=owner.headers)
        seen = await _events_until(pubsub, f"u:{member.id}")
        assert seen[f"r:{rid}"]["type"] == "room_updated" and seen[f"r:{rid}"]["room"]["my_role"] is None
        assert seen[f"u:{member.id}"]["room"]["my_role"] == "admin"
        assert api.delete(f"/rooms/{rid}", headers=owner.headers).status_code == 204
        gone = await _events_until(pubsub, f"d:{rid}")
        assert gone[f"d:{rid}"] == {"type": "room_deleted", "room_id": rid}
        assert await member_sets.is_member(redis, keys, rid, owner.id) is None  # forgotten
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()
