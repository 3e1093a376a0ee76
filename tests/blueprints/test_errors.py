"""The error envelope for malformed and oversized bodies, through the real server."""

from __future__ import annotations

import httpx

from tests.factories import make_user


def test_json_body_over_the_limit_is_413_in_the_envelope(api: httpx.Client, settings) -> None:
    user = make_user(api)
    big = b'{"name": "' + b"x" * (settings.request_max_bytes + 10) + b'"}'
    resp = api.post("/rooms", content=big, headers={**user.headers, "content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert set(resp.json()["error"]) == {"code", "message", "details"}


def test_body_that_is_not_a_json_object_is_400(api: httpx.Client) -> None:
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        resp = api.post("/auth/login", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400, raw
        assert resp.json()["error"]["code"] == "malformed_json"
