"""Accounts and tokens through the real server: register, login, refresh, logout, forged tokens."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest

from app.settings import Settings
from tests.checks import assert_error
from tests.env import TEST_ENV
from tests.factories import PASSWORD, make_user, unique
from tests.support import OwnServers, ServerProc

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def forge(settings: Settings, base: dict[str, Any], *, key: str | None = None, alg: str = "HS256",
          drop: tuple[str, ...] = (), **overrides: Any) -> str:
    """Re-sign a real token's claims with chosen defects (PyJWT, as an attacker would)."""
    payload = {**base, **overrides}
    for name in drop:
        payload.pop(name, None)
    if alg == "none":
        return jwt.encode(payload, None, algorithm="none")
    return jwt.encode(payload, key or settings.jwt_secret, algorithm=alg)


# -- register ----------------------------------------------------------------

def test_register_returns_the_user_without_secrets(api: httpx.Client) -> None:
    name = unique("Reg.")
    resp = api.post("/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status_code == 201, resp.text
    user = resp.json()
    assert set(user) == {"id", "username", "display_name", "created_at"}
    assert user["username"] == name and user["display_name"] == name
    assert str(uuid.UUID(user["id"])) == user["id"] and ISO_MS.match(user["created_at"])
    assert PASSWORD not in resp.text and "argon2" not in resp.text

    named = api.post("/auth/register", json={"username": unique(), "password": PASSWORD,
                                             "display_name": "  Ada Lovelace  "})
    assert named.status_code == 201 and named.json()["display_name"] == "Ada Lovelace"


def test_usernames_are_unique_case_insensitively(api: httpx.Client) -> None:
    name = unique("Mixed")
    assert api.post("/auth/register", json={"username": name, "password": PASSWORD}).status_code == 201
    for other in (name, name.upper(), name.lower()):
        assert_error(api.post("/auth/register", json={"username": other, "password": PASSWORD}),
                     409, "username_taken")
    # Login accepts any letter case and keeps the spelling chosen at registration.
    login = api.post("/auth/login", json={"username": name.upper(), "password": PASSWORD})
    assert login.status_code == 200
    me = api.get("/users/me", headers=bearer(login.json()["access_token"]))
    assert me.json()["username"] == name


def test_concurrent_registrations_of_one_name_yield_one_account(api: httpx.Client, server: ServerProc) -> None:
    name = unique()

    def attempt(spelling: str) -> int:
        with httpx.Client(base_url=server.base_url, timeout=20) as c:
            return c.post("/auth/register", json={"username": spelling, "password": PASSWORD}).status_code

    spellings = [name, name.upper(), name.lower(), name.capitalize()] * 2
    with ThreadPoolExecutor(len(spellings)) as pool:
        statuses = list(pool.map(attempt, spellings))
    assert sorted(statuses) == [201] + [409] * (len(spellings) - 1)


@pytest.mark.parametrize("body, field", [
    ({"password": PASSWORD}, "username"),
    ({"username": "ab", "password": PASSWORD}, "username"),
    ({"username": "a" * 33, "password": PASSWORD}, "username"),
    ({"username": "bad name", "password": PASSWORD}, "username"),
    ({"username": "bad/name", "password": PASSWORD}, "username"),
    ({"username": "trailing\n", "password": PASSWORD}, "username"),
    ({"username": "émile", "password": PASSWORD}, "username"),
    ({"username": 12345, "password": PASSWORD}, "username"),
    ({"username": "okname"}, "password"),
    ({"username": "okname", "password": "short"}, "password"),
    ({"username": "okname", "password": "p" * 129}, "password"),
    ({"username": "okname", "password": PASSWORD, "display_name": ""}, "display_name"),
    ({"username": "okname", "password": PASSWORD, "display_name": "   "}, "display_name"),
    ({"username": "okname", "password": PASSWORD, "display_name": "d" * 65}, "display_name"),
    ({"username": "okname", "password": PASSWORD, "display_name": "nul\x00byte"}, "display_name"),
])
def test_register_validation_failures_are_422_with_the_field(api: httpx.Client, body: dict, field: str) -> None:
    err = assert_error(api.post("/auth/register", json=body), 422, "validation_failed")
    assert field in err["details"]["fields"], err


def test_register_accepts_the_edges_of_the_rules(api: httpx.Client) -> None:
    for name, password in ((f"a.{uuid.uuid4().hex[:2]}", "p" * 8),
                           (f"Z_-.{uuid.uuid4().hex}"[:32], "p" * 128)):
        resp = api.post("/auth/register", json={"username": name, "password": password,
                                                "display_name": "x" * 64})
        assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("path", ["/auth/register", "/auth/login", "/auth/refresh"])
def test_bodies_that_are_not_json_objects_are_400(api: httpx.Client, path: str) -> None:
    assert_error(api.post(path, content=b"{not json", headers={"Content-Type": "application/json"}),
                 400, "malformed_json")
    assert_error(api.post(path, json=["a", "list"]), 400, "malformed_json")


# -- login -------------------------------------------------------------------

def test_login_returns_a_bearer_pair(api: httpx.Client, settings: Settings) -> None:
    user = make_user(api)
    resp = api.post("/auth/login", json={"username": user.username, "password": PASSWORD})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == settings.access_token_ttl_s
    access = claims_of(body["access_token"])
    assert access["sub"] == user.id
    assert {"sub", "exp", "iat", "jti", "iss", "aud"} <= set(access)
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    assert api.get("/users/me", headers=bearer(body["access_token"])).status_code == 200


def test_wrong_password_and_unknown_user_look_the_same(api: httpx.Client) -> None:
    user = make_user(api)
    wrong = api.post("/auth/login", json={"username": user.username, "password": "not-the-password"})
    unknown = api.post("/auth/login", json={"username": unique("ghost"), "password": PASSWORD})
    for resp in (wrong, unknown):
        assert_error(resp, 401, "invalid_credentials")
    assert wrong.json() == unknown.json()
    # Text no account can hold (NUL) is refused at the door, like in every other field: it
    # says nothing about which accounts exist.
    odd = api.post("/auth/login", json={"username": "no such\x00name", "password": PASSWORD})
    assert "username" in assert_error(odd, 422, "validation_failed")["details"]["fields"]


def test_login_validation(api: httpx.Client) -> None:
    assert "password" in assert_error(api.post("/auth/login", json={"username": "x"}), 422)["details"]["fields"]
    assert "username" in assert_error(api.post("/auth/login", json={"password": "x"}), 422)["details"]["fields"]


# -- refresh -------------------------------------------------------------------

def _refresh(api: httpx.Client, token: str) -> httpx.Response:
    return api.post("/auth/refresh", json={"refresh_token": token})


def test_refresh_rotates_the_pair_within_the_session(api: httpx.Client) -> None:
    user = make_user(api)
    first = _refresh(api, user.refresh_token)
    assert first.status_code == 200, first.text
    pair = first.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["refresh_token"] != user.refresh_token and pair["access_token"] != user.access_token
    assert claims_of(pair["refresh_token"])["fam"] == claims_of(user.refresh_token)["fam"]
    assert api.get("/users/me", headers=bearer(pair["access_token"])).json()["id"] == user.id
    second = _refresh(api, pair["refresh_token"])
    assert second.status_code == 200
    # Rotation did not end the session: the older access token still works within its lifetime.
    assert api.get("/users/me", headers=user.headers).status_code == 200


def test_reusing_a_refresh_token_revokes_the_whole_family(api: httpx.Client) -> None:
    user = make_user(api)
    newest = _refresh(api, user.refresh_token).json()
    assert api.get("/users/me", headers=bearer(newest["access_token"])).status_code == 200

    assert_error(_refresh(api, user.refresh_token), 401, "refresh_token_reused")
    # The thief's (or the owner's) newest tokens die with the family, the access token at once.
    assert_error(api.get("/users/me", headers=bearer(newest["access_token"])), 401)
    assert_error(api.get("/users/me", headers=user.headers), 401)
    assert_error(_refresh(api, newest["refresh_token"]), 401, "invalid_token")
    # Another login of the same user is a different family and is untouched.
    other = api.post("/auth/login", json={"username": user.username, "password": PASSWORD}).json()
    assert api.get("/users/me", headers=bearer(other["access_token"])).status_code == 200
    assert _refresh(api, other["refresh_token"]).status_code == 200


def test_concurrent_refreshes_of_one_token_have_one_winner(api: httpx.Client, server: ServerProc) -> None:
    user = make_user(api)

    def attempt(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, timeout=20) as c:
            return _refresh(c, user.refresh_token)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(4)))
    assert sorted(r.status_code for r in results) == [200, 401, 401, 401]
    for r in results:
        if r.status_code == 401:
            assert_error(r, 401)["code"] in ("refresh_token_reused", "invalid_token")


def test_refresh_refuses_anything_but_a_live_refresh_token(api: httpx.Client, settings: Settings) -> None:
    user = make_user(api)
    base = claims_of(user.refresh_token)
    now = int(time.time())
    bad = [
        "garbage",
        user.access_token,  # access-as-refresh
        forge(settings, base, key="another-secret-that-is-long-enough-0123456789"),
        forge(settings, base, alg="none"),
        forge(settings, base, aud="someone-else"),
        forge(settings, base, iss="someone-else"),
        forge(settings, base, drop=("exp",)),
        forge(settings, base, iat=now - 7200, exp=now - 3600),
        forge(settings, base, jti=uuid.uuid4().hex),  # well signed, never issued
        forge(settings, base, jti="not-a-uuid"),
        forge(settings, base, fam=str(uuid.uuid4())),
    ]
    for token in bad:
        assert_error(_refresh(api, token), 401, "invalid_token")
    assert "refresh_token" in assert_error(_refresh(api, ""), 422)["details"]["fields"]
    # None of that disturbed the real session.
    assert _refresh(api, user.refresh_token).status_code == 200


# -- logout --------------------------------------------------------------------

def test_logout_ends_the_session_at_once(api: httpx.Client) -> None:
    user = make_user(api)
    other_session = api.post("/auth/login", json={"username": user.username, "password": PASSWORD}).json()
    resp = api.post("/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers)
    assert resp.status_code == 204 and resp.content == b""
    assert_error(api.get("/users/me", headers=user.headers), 401, "invalid_token")
    assert_error(_refresh(api, user.refresh_token), 401, "invalid_token")
    # Only that login ended; logging it out again (from the other session) is harmless.
    assert api.get("/users/me", headers=bearer(other_session["access_token"])).status_code == 200
    again = api.post("/auth/logout", json={"refresh_token": user.refresh_token},
                     headers=bearer(other_session["access_token"]))
    assert again.status_code == 204


def test_logout_ends_the_rotated_session_too(api: httpx.Client) -> None:
    user = make_user(api)
    newest = _refresh(api, user.refresh_token).json()
    # Logging out with an older (used) refresh token of the same login ends the login.
    resp = api.post("/auth/logout", json={"refresh_token": user.refresh_token},
                    headers=bearer(newest["access_token"]))
    assert resp.status_code == 204
    assert_error(api.get("/users/me", headers=bearer(newest["access_token"])), 401)
    assert_error(_refresh(api, newest["refresh_token"]), 401, "invalid_token")


def test_logout_needs_a_bearer_and_the_callers_own_refresh_token(api: httpx.Client) -> None:
    alice, bob = make_user(api), make_user(api)
    assert_error(api.post("/auth/logout", json={"refresh_token": alice.refresh_token}), 401)
    assert_error(api.post("/auth/logout", json={"refresh_token": bob.refresh_token}, headers=alice.headers),
                 401, "invalid_token")
    assert_error(api.post("/auth/logout", json={"refresh_token": alice.access_token}, headers=alice.headers),
                 401, "invalid_token")
    assert_error(api.post("/auth/logout", json={}, headers=alice.headers), 422)
    # Bob's session survived Alice's attempt.
    assert api.get("/users/me", headers=bob.headers).status_code == 200
    assert _refresh(api, bob.refresh_token).status_code == 200


# -- access tokens -------------------------------------------------------------

def test_bad_authorization_is_401_in_the_envelope(api: httpx.Client, settings: Settings) -> None:
    user = make_user(api)
    base = claims_of(user.access_token)
    now = int(time.time())
    # Control: our own signature over the same claims is accepted, so each case below
    # fails for its one defect only.
    assert api.get("/users/me", headers=bearer(forge(settings, base))).status_code == 200
    headers = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer two tokens"},
        {"Authorization": f"Basic {user.access_token}"},
        {"Authorization": user.access_token},
        bearer("not.a.jwt"),
        bearer(forge(settings, base, alg="none")),
        bearer(forge(settings, base, key="another-secret-that-is-long-enough-0123456789")),
        bearer(forge(settings, base, aud="someone-else")),
        bearer(forge(settings, base, iss="someone-else")),
        bearer(forge(settings, base, drop=("exp",))),
        bearer(forge(settings, base, iat=now - 7200, exp=now - 3600)),
        bearer(user.refresh_token),  # refresh-as-access
        bearer(forge(settings, base, typ="refresh")),
    ]
    for h in headers:
        assert_error(api.get("/users/me", headers=h), 401)


# -- rate limit ------------------------------------------------------------------

def test_register_and_login_are_rate_limited_per_ip(own_server: OwnServers) -> None:
    # Own server with a tiny budget and its own Redis prefix, so the session server's
    # traffic from the same IP does not share (or exhaust) this counter.
    with own_server(name="ratelimit", RATE_AUTH="3", REDIS_PREFIX=f"{TEST_ENV['REDIS_PREFIX']}-rl") as proc:
        with httpx.Client(base_url=proc.base_url, timeout=10) as c:
            name = unique()
            assert c.post("/auth/register", json={"username": name, "password": PASSWORD}).status_code == 201
            login = c.post("/auth/login", json={"username": name, "password": PASSWORD})
            assert login.status_code == 200
            assert_error(c.post("/auth/login", json={"username": name, "password": "wrong-password"}),
                         401, "invalid_credentials")
            for call in (lambda: c.post("/auth/login", json={"username": name, "password": PASSWORD}),
                         lambda: c.post("/auth/register", json={"username": unique(), "password": PASSWORD})):
                resp = call()
                err = assert_error(resp, 429, "rate_limited")
                assert 1 <= int(resp.headers["Retry-After"]) <= 60
                assert err["details"]["retry_after"] == int(resp.headers["Retry-After"])
            # Sessions already open are not affected: refresh and authenticated calls go on.
            assert _refresh(c, login.json()["refresh_token"]).status_code == 200
