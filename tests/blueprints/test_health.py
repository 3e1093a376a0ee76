"""Health probes and the OpenAPI document, through the real server process."""

from __future__ import annotations

import httpx


def test_healthz_and_readyz(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["postgres"] == "ok" and ready.json()["redis"] == "ok"


def test_openapi_document_is_served(api: httpx.Client) -> None:
    # sanic-ext silently drops /docs when pydantic is missing (STACK.md): prove it is there.
    spec = api.get("/docs/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["openapi"].startswith("3.")
    assert api.get("/docs").status_code == 200


def test_unknown_route_and_wrong_method_use_the_error_envelope(api: httpx.Client) -> None:
    missing = api.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not found.", "details": {}}}
    wrong = api.delete("/healthz")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
