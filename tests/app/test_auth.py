"""Tokens, passwords and sessions at the service level, on the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
import pytest
from redis.asyncio import Redis

from app import auth, tokens
from app.errors import InvalidCredentials, InvalidToken, RefreshTokenReused, TokenExpired, UsernameTaken
from app.store.keys import Keys
from app.settings import Settings
from models.token import RefreshToken, TokenFamily
from tests.factories import unique


def forge(settings: Settings, kind: str = tokens.ACCESS, *, key: str | None = None, alg: str = "HS256",
          drop: tuple[str, ...] = (), **overrides: Any) -> str:
    """A token shaped like ours, with chosen defects."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": str(uuid.uuid4()), "fam": str(uuid.uuid4()), "typ": kind, "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "iat": now, "exp": now + 600,
    }
    payload.update(overrides)
    for name in drop:
        payload.pop(name)
    if alg == "none":
        return jwt.encode(payload, None, algorithm="none")
    return jwt.encode(payload, key or settings.jwt_secret, algorithm=alg)


async def test_issued_tokens_verify_as_their_own_kind_only(settings: Settings) -> None:
    access, claims = tokens.issue(settings, user_id="u1", family_id="f1", kind=tokens.ACCESS)
    refresh, _ = tokens.issue(settings, user_id="u1", family_id="f1", kind=tokens.REFRESH)
    got = tokens.verify(settings, access, tokens.ACCESS)
    assert (got.user_id, got.family_id, got.jti) == ("u1", "f1", claims.jti)
    with pytest.raises(InvalidToken):
        tokens.verify(settings, refresh, tokens.ACCESS)
    with pytest.raises(InvalidToken):
        tokens.verify(settings, access, tokens.REFRESH)


@pytest.mark.parametrize("defect", [
    {"alg": "none"},
    {"key": "another-secret-that-is-long-enough-0123456789"},
    {"aud": "someone-else"},
    {"iss": "someone-else"},
    {"drop": ("exp",)},
    {"drop": ("sub",)},
    {"typ": tokens.REFRESH},
    {"alg": "HS512"},  # algorithm pinned: even a correctly keyed HS512 token is refused
])
async def test_forged_access_tokens_are_refused(settings: Settings, redis: Redis, keys: Keys,
                                                defect: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        await auth.check_access_token(settings, redis, keys, forge(settings, **defect))


async def test_expired_access_token_is_refused_as_expired(settings: Settings, redis: Redis, keys: Keys) -> None:
    old = int(time.time()) - 3600
    with pytest.raises(TokenExpired):
        await auth.check_access_token(settings, redis, keys, forge(settings, iat=old, exp=old + 60))


async def test_a_remembered_access_token_still_expires_and_still_logs_out(settings: Settings, redis: Redis,
                                                                          keys: Keys) -> None:
    # TOKEN_CACHE_SIZE: a token verified once is not decoded again (app/tokens.py), but
    # a remembered token must still expire on time, and a logout must still close it.
    now = int(time.time())
    token = forge(settings, iat=now, exp=now + 2)
    first = await auth.check_access_token(settings, redis, keys, token)
    assert await auth.check_access_token(settings, redis, keys, token) == first  # remembered
    await redis.set(keys.revoked_family(first.family_id), "1", ex=60)
    with pytest.raises(InvalidToken):
        await auth.check_access_token(settings, redis, keys, token)
    await redis.delete(keys.revoked_family(first.family_id))
    await asyncio.sleep(max(0.0, now + 2 - time.time()) + 0.05)
    with pytest.raises(TokenExpired):
        tokens.verify(settings, token, tokens.ACCESS)


async def test_a_remembered_access_token_is_not_accepted_under_another_secret(settings: Settings) -> None:
    token = forge(settings)
    tokens.verify(settings, token, tokens.ACCESS)
    other = settings.model_copy(update={"jwt_secret": "another-secret-that-is-long-enough-0123456789"})
    with pytest.raises(InvalidToken):
        tokens.verify(other, token, tokens.ACCESS)


async def test_password_hashing_roundtrip(settings: Settings) -> None:
    hashed = await auth.hash_password(settings, "s3cret-password")
    assert hashed.startswith("$argon2id$") and "s3cret" not in hashed
    assert (await auth.verify_password(settings, "s3cret-password", hashed))[0] is True
    assert (await auth.verify_password(settings, "wrong-password", hashed))[0] is False


async def test_hash_made_with_other_costs_is_upgraded_on_verify(settings: Settings) -> None:
    stronger = Settings(argon2_time_cost=settings.argon2_time_cost + 1, argon2_memory_kib=settings.argon2_memory_kib)
    hashed = await auth.hash_password(stronger, "s3cret-password")
    ok, new_hash = await auth.verify_password(settings, "s3cret-password", hashed)
    assert ok and new_hash and new_hash != hashed


async def _user_and_session(settings: Settings) -> tuple[str, auth.TokenPair]:
    name = unique()
    user = await auth.register(settings, username=name, password="password-123", display_name=None)
    pair = await auth.login(settings, username=name.upper(), password="password-123")
    return str(user.id), pair


async def test_register_is_case_insensitively_unique(db: None, settings: Settings) -> None:
    name = unique("Case")
    user = await auth.register(settings, username=name, password="password-123", display_name=None)
    assert user.display_name == name and user.password_hash.startswith("$argon2id$")
    with pytest.raises(UsernameTaken):
        await auth.register(settings, username=name.lower(), password="password-123", display_name=None)


async def test_concurrent_registrations_of_one_name_create_one_user(db: None, settings: Settings) -> None:
    name = unique()
    results = await asyncio.gather(
        *(auth.register(settings, username=n, password="password-123", display_name=None)
          for n in (name, name.upper(), name.lower())), return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
    assert all(isinstance(r, UsernameTaken) for r in results if isinstance(r, BaseException))


async def test_unknown_user_and_wrong_password_fail_alike(db: None, settings: Settings) -> None:
    with pytest.raises(InvalidCredentials):
        await auth.login(settings, username=unique("nobody"), password="password-123")
    with pytest.raises(InvalidCredentials):
        await auth.login(settings, username="bad\x00name", password="password-123")
    name = unique()
    await auth.register(settings, username=name, password="password-123", display_name=None)
    with pytest.raises(InvalidCredentials):
        await auth.login(settings, username=name, password="password-124")


async def test_login_stores_a_family_and_its_refresh_token(db: None, settings: Settings) -> None:
    user_id, pair = await _user_and_session(settings)
    claims = tokens.verify(settings, pair.refresh_token, tokens.REFRESH)
    access = tokens.verify(settings, pair.access_token, tokens.ACCESS)
    assert claims.user_id == access.user_id == user_id and claims.family_id == access.family_id
    row = await RefreshToken.get(jti=uuid.UUID(claims.jti))
    assert str(row.family_id) == claims.family_id and row.used_at is None


async def test_concurrent_refreshes_of_one_token_have_exactly_one_winner(
        db: None, settings: Settings, redis: Redis, keys: Keys) -> None:
    _, pair = await _user_and_session(settings)
    results = await asyncio.gather(
        *(auth.refresh(settings, redis, keys, refresh_token=pair.refresh_token) for _ in range(4)),
        return_exceptions=True)
    winners = [r for r in results if isinstance(r, auth.TokenPair)]
    assert len(winners) == 1
    assert all(isinstance(r, (RefreshTokenReused, InvalidToken)) for r in results if r not in winners)
    # The losers presented a used token: the session is revoked, the winner's tokens included.
    fam = tokens.verify(settings, pair.refresh_token, tokens.REFRESH).family_id
    assert (await TokenFamily.get(id=uuid.UUID(fam))).revoked_at is not None
    with pytest.raises(InvalidToken):
        await auth.check_access_token(settings, redis, keys, winners[0].access_token)
    with pytest.raises(InvalidToken):
        await auth.refresh(settings, redis, keys, refresh_token=winners[0].refresh_token)


async def test_logout_of_someone_elses_session_is_refused(
        db: None, settings: Settings, redis: Redis, keys: Keys) -> None:
    alice_id, alice = await _user_and_session(settings)
    bob_id, bob = await _user_and_session(settings)
    with pytest.raises(InvalidToken):
        await auth.logout(settings, redis, keys, user_id=alice_id, refresh_token=bob.refresh_token)
    # Bob's session is untouched.
    await auth.check_access_token(settings, redis, keys, bob.access_token)
    await auth.logout(settings, redis, keys, user_id=bob_id, refresh_token=bob.refresh_token)
    with pytest.raises(InvalidToken):
        await auth.check_access_token(settings, redis, keys, bob.access_token)
    fam = tokens.verify(settings, bob.access_token, tokens.ACCESS).family_id
    assert 0 < await redis.ttl(keys.revoked_family(fam)) <= settings.access_token_ttl_s
