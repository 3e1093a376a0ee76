"""The app factory in-process (sanic-testing) and the settings the factory refuses."""

from __future__ import annotations

import uuid

import pytest

from app.factory import create_app
from app.settings import DEV_JWT_SECRET, Settings, SettingsError
from tests.env import TEST_ENV


def _app(settings: Settings):
    # sanic-testing needs a fresh, uniquely named app per client (STACK.md).
    return create_app(settings, name=f"chat_test_{uuid.uuid4().hex[:8]}")


def test_factory_builds_a_serving_app_with_docs_and_the_error_envelope(settings: Settings) -> None:
    app = _app(settings)
    _, health = app.test_client.get("/healthz")
    assert health.status == 200 and health.json == {"status": "ok"}
    _, spec = app.test_client.get("/docs/openapi.json")
    assert spec.status == 200
    # Every route of API.md is documented (sanic-ext drops /docs silently without pydantic).
    assert set(spec.json["paths"]) >= {
        "/auth/register", "/auth/login", "/auth/refresh", "/auth/logout", "/users", "/users/me",
        "/rooms", "/rooms/{room_id}", "/rooms/{room_id}/join", "/rooms/{room_id}/leave",
        "/rooms/{room_id}/members", "/rooms/{room_id}/members/{user_id}", "/rooms/{room_id}/messages",
        "/rooms/{room_id}/messages/{seq}", "/rooms/{room_id}/files", "/files/{file_id}",
        "/files/{file_id}/thumbnail", "/files/{file_id}/meta", "/healthz", "/readyz",
    }
    _, missing = app.test_client.get("/nope")
    assert missing.status == 404 and missing.json["error"]["code"] == "not_found"


def test_production_refuses_the_development_or_a_short_jwt_secret() -> None:
    base = {**TEST_ENV, "CHAT_ENV": "production"}
    with pytest.raises(SettingsError, match="development default"):
        Settings.load(env={**base, "JWT_SECRET": DEV_JWT_SECRET}, env_file=None)
    with pytest.raises(SettingsError, match="32 bytes"):
        Settings.load(env={**base, "JWT_SECRET": "x" * 31}, env_file=None)
    assert Settings.load(env={**base, "JWT_SECRET": "x" * 32}, env_file=None).production


def test_settings_reject_malformed_values() -> None:
    with pytest.raises(SettingsError, match="PORT"):
        Settings.load(env={**TEST_ENV, "PORT": "eighty"}, env_file=None)
    with pytest.raises(SettingsError, match="CHAT_WRITE_MODE"):
        Settings.load(env={**TEST_ENV, "CHAT_WRITE_MODE": "sometimes"}, env_file=None)


def test_sanic_buffers_at_most_the_json_cap(settings: Settings) -> None:
    """Non-streaming routes are capped by Sanic itself before buffering; only uploads stream past it."""
    app = _app(settings.replace(request_max_bytes=4096))
    assert app.config.REQUEST_MAX_SIZE == 4096
    _, resp = app.test_client.post("/auth/login", content=b'{"username": "' + b"x" * 5000 + b'"}',
                                   headers={"content-type": "application/json"})
    assert resp.status == 413 and resp.json["error"]["code"] == "payload_too_large"

