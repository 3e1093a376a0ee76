"""Test factories: real users and rooms made through the public HTTP API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

PASSWORD = "correct horse battery"


def unique(prefix: str = "u") -> str:
    """A name no other test (or test session) uses; fits the 3-32 char username rule."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class TestUser:
    __test__ = False  # not a test class

    id: str
    username: str
    password: str
    access_token: str
    refresh_token: str
    user: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def make_user(api: httpx.Client, username: str | None = None, password: str = PASSWORD,
              display_name: str | None = None) -> TestUser:
    """Register and log in a new user."""
    username = username or unique()
    body: dict[str, Any] = {"username": username, "password": password}
    if display_name is not None:
        body["display_name"] = display_name
    reg = api.post("/auth/register", json=body)
    assert reg.status_code == 201, reg.text
    login = api.post("/auth/login", json={"username": username, "password": password})
    assert login.status_code == 200, login.text
    tokens = login.json()
    return TestUser(reg.json()["id"], username, password, tokens["access_token"],
                    tokens["refresh_token"], reg.json())


def make_room(api: httpx.Client, owner: TestUser, name: str | None = None, **fields: Any) -> dict[str, Any]:
    """Create a room owned by `owner`; extra fields (topic, is_private, member_ids) pass through."""
    resp = api.post("/rooms", json={"name": name or unique("room-"), **fields}, headers=owner.headers)
    assert resp.status_code == 201, resp.text
    return resp.json()
