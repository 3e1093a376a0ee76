"""User routes through the real server: /users/me and username search."""

from __future__ import annotations

import uuid

import httpx

from tests.checks import assert_error
from tests.factories import TestUser, make_user


def _tag() -> str:
    """A prefix no other test's usernames start with (lower case, 9 chars)."""
    return "s" + uuid.uuid4().hex[:8]


def _search(api: httpx.Client, caller: TestUser, **params: object) -> httpx.Response:
    return api.get("/users", params=params, headers=caller.headers)


def _names(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [u["username"] for u in resp.json()["items"]]


def test_me_is_the_callers_user(api: httpx.Client) -> None:
    user = make_user(api, display_name="Grace")
    resp = api.get("/users/me", headers=user.headers)
    assert resp.status_code == 200
    assert resp.json() == user.user
    assert set(resp.json()) == {"id", "username", "display_name", "created_at"}
    assert resp.json()["display_name"] == "Grace"


def test_user_routes_need_a_token(api: httpx.Client) -> None:
    assert_error(api.get("/users/me"), 401)
    assert_error(api.get("/users", params={"q": "a"}), 401)


def test_search_is_a_case_insensitive_prefix_match_in_username_order(api: httpx.Client) -> None:
    tag = _tag()
    caller = make_user(api)
    for suffix in ("Bob", "alice", "Carol", "x-dave"):
        make_user(api, username=f"{tag}{suffix}")
    make_user(api, username=f"z{tag}alice")  # contains the tag but does not start with it
    assert _names(_search(api, caller, q=tag)) == [f"{tag}alice", f"{tag}Bob", f"{tag}Carol", f"{tag}x-dave"]
    assert _names(_search(api, caller, q=f"{tag.upper()}B")) == [f"{tag}Bob"]
    assert _names(_search(api, caller, q=f"{tag}nobody")) == []
    body = _search(api, caller, q=tag).json()
    assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None
    for item in body["items"]:
        assert set(item) == {"id", "username", "display_name", "created_at"}


def test_search_takes_percent_and_underscore_literally(api: httpx.Client) -> None:
    tag = _tag()
    caller = make_user(api)
    make_user(api, username=f"{tag}_under")
    make_user(api, username=f"{tag}xunder")
    # Unescaped, "_" would match any one character and "%" anything at all.
    assert _names(_search(api, caller, q=f"{tag}_")) == [f"{tag}_under"]
    assert _names(_search(api, caller, q=f"{tag}%")) == []
    assert _names(_search(api, caller, q="%")) == []
    assert _names(_search(api, caller, q="_%")) == []
    # NUL is refused at the door for every query parameter (PostgreSQL cannot store it): 422, not a 500.
    assert "q" in assert_error(_search(api, caller, q=f"{tag}\x00"), 422, "validation_failed")["details"]["fields"]


def test_search_pages_with_an_opaque_cursor(api: httpx.Client) -> None:
    tag = _tag()
    caller = make_user(api)
    expected = sorted(f"{tag}{i:02d}" for i in range(5))
    for name in reversed(expected):
        make_user(api, username=name)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"q": tag, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        resp = _search(api, caller, **params)
        seen += _names(resp)
        pages += 1
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert seen == expected and pages == 3


def test_search_limit_and_cursor_validation(api: httpx.Client) -> None:
    caller = make_user(api)
    for limit in ("0", "-1", "abc"):
        err = assert_error(_search(api, caller, q="a", limit=limit), 422, "validation_failed")
        assert "limit" in err["details"]["fields"]
    for cursor in ("not-a-cursor!", "bnVsbA", "eyJ1IjoxfQ", "eyJ1IjoiXHUwMDAwIn0"):  # junk, null, {"u":1}, {"u":"\0"}
        err = assert_error(_search(api, caller, q="a", cursor=cursor), 422, "validation_failed")
        assert "cursor" in err["details"]["fields"]
    # Above 200 is clamped, not refused.
    assert _search(api, caller, q="a", limit=1000).status_code == 200


def test_search_with_empty_q_lists_users(api: httpx.Client) -> None:
    caller = make_user(api)
    body = _search(api, caller, limit=1).json()
    assert len(body["items"]) == 1 and body["next_cursor"] is not None
