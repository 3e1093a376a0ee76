"""Assertions about the API's response shapes, shared by the HTTP tests (a support module, not a test module).

One definition of the error envelope check and of walking a paginated list, so the tests of
different routes cannot drift apart on what `{"error": {"code", "message", "details"}}` or
`{"items", "next_cursor"}` means.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.factories import TestUser

# The fields of a membership in the API's responses (docs/api.md).
MEMBERSHIP_KEYS = {"room_id", "user_id", "username", "role", "joined_at"}


def assert_error(resp: httpx.Response, status: int, code: str | None = None,
                 field: str | None = None) -> dict[str, Any]:
    """The response is `status` in the API's error envelope (with `code`, and `field` named, when given).

    Returns the `error` object.
    """
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    err = body["error"]
    assert isinstance(err["details"], dict), err
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert field in err["details"]["fields"], err
    return err


def error_code(resp: httpx.Response, status: int) -> str:
    """The error code of a response that must be `status` in the error envelope."""
    return str(assert_error(resp, status)["code"])


def walk(api: httpx.Client, user: TestUser, path: str, **params: str) -> list[dict[str, Any]]:
    """Every item of a list, one page of `limit` at a time."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        resp = api.get(path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=user.headers)
        assert resp.status_code == 200, resp.text
        items += resp.json()["items"]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination never ended")
