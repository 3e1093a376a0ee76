"""Accounts and sessions: register, login, refresh rotation with reuse detection, logout.

A login creates a token family (one row per session) and its first refresh
token (one row per jti). Each refresh marks its token used and issues the next
one in the same family; presenting a used token again is treated as theft and
revokes the family. Revoking a family also sets a Redis marker for the access
token lifetime, so the family's access tokens stop at once
(`check_access_token` looks for it on every authenticated call), and publishes
a user-routed event that makes every server process close that login's open
WebSockets with 4401 (the access token's `fam` claim names the family).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from passlib.context import CryptContext
from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app.realtime import events
from app import tokens
from app.errors import InvalidCredentials, InvalidToken, RefreshTokenReused, TokenExpired, UsernameTaken
from app.ids import parse_uuid
from app.store.keys import Keys
from app.serialize import utcnow
from app.settings import Settings
from app.users import could_be_username
from models.token import RefreshToken, TokenFamily
from models.user import User


# -- passwords -------------------------------------------------------------

@lru_cache(maxsize=4)
def _context(time_cost: int, memory_kib: int) -> CryptContext:
    """The argon2id context for these costs (built once; raises ValueError on impossible costs)."""
    return CryptContext(schemes=["argon2"], argon2__time_cost=time_cost,
                        argon2__memory_cost=memory_kib, argon2__parallelism=1)


def password_context(settings: Settings) -> CryptContext:
    return _context(settings.argon2_time_cost, settings.argon2_memory_kib)


# One dummy hash per cost setting: login of an unknown user verifies against it,
# so it costs the same as a wrong password and timing does not reveal accounts.
_dummy_hashes: dict[tuple[int, int], str] = {}


async def _run(fn: Any, *args: Any) -> Any:
    """Run CPU-heavy hashing in a thread: argon2 would block the event loop for ~50-200 ms."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def hash_password(settings: Settings, password: str) -> str:
    return await _run(password_context(settings).hash, password)


async def _dummy_hash(settings: Settings) -> str:
    key = (settings.argon2_time_cost, settings.argon2_memory_kib)
    if key not in _dummy_hashes:
        _dummy_hashes[key] = await hash_password(settings, secrets.token_urlsafe(16))
    return _dummy_hashes[key]


async def verify_password(settings: Settings, password: str, hashed: str) -> tuple[bool, str | None]:
    """(matches, new hash when the stored one used other costs) without blocking the loop."""
    try:
        return await _run(password_context(settings).verify_and_update, password, hashed)
    except ValueError:  # passlib's UnknownHashError (and malformed-hash errors): never a 500
        return False, None


async def warm_up(settings: Settings) -> None:
    """Build the context and the dummy hash at start-up: bad cost settings fail loudly there."""
    await _dummy_hash(settings)


# -- accounts --------------------------------------------------------------

async def register(settings: Settings, *, username: str, password: str, display_name: str | None) -> User:
    """Create an account; 409 username_taken when the name exists in any letter case."""
    lower = username.lower()
    # Cheap check first so a taken name does not cost a hash; the unique index decides races.
    if await User.exists(username_lower=lower):
        raise UsernameTaken()
    hashed = await hash_password(settings, password)
    try:
        return await User.create(username=username, username_lower=lower,
                                 display_name=display_name or username, password_hash=hashed)
    except IntegrityError:
        raise UsernameTaken() from None


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int

    def body(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "refresh_token": self.refresh_token,
                "token_type": "Bearer", "expires_in": self.expires_in}


def _issue_pair(settings: Settings, user_id: str, family_id: str, now: datetime,
                username: str | None = None) -> tuple[TokenPair, uuid.UUID, datetime]:
    """Sign a new access/refresh pair; returns it with the refresh jti and expiry to store.
    `username` becomes the `usr` claim of both (lowercased)."""
    jti = uuid.uuid4()
    access, _ = tokens.issue(settings, user_id=user_id, family_id=family_id, kind=tokens.ACCESS, now=now,
                             username=username)
    refresh, rclaims = tokens.issue(settings, user_id=user_id, family_id=family_id, kind=tokens.REFRESH,
                                    jti=jti.hex, now=now, username=username)
    return TokenPair(access, refresh, settings.access_token_ttl_s), jti, rclaims.expires_at


async def login(settings: Settings, *, username: str, password: str) -> TokenPair:
    """Check the password and open a new session (token family); 401 invalid_credentials."""
    user = await User.get_or_none(username_lower=username.lower()) if could_be_username(username) else None
    stored = user.password_hash if user is not None else await _dummy_hash(settings)
    ok, new_hash = await verify_password(settings, password, stored)
    if user is None or not ok:
        raise InvalidCredentials()
    if new_hash:  # cost settings changed since this hash was made: upgrade it transparently
        await User.filter(id=user.id).update(password_hash=new_hash)
    now = utcnow()
    family_id = uuid.uuid4()
    pair, jti, expires_at = _issue_pair(settings, str(user.id), str(family_id), now, user.username_lower)
    async with in_transaction() as conn:
        await TokenFamily.create(id=family_id, user_id=user.id, using_db=conn)
        await RefreshToken.create(jti=jti, family_id=family_id, expires_at=expires_at, using_db=conn)
    return pair


# -- sessions --------------------------------------------------------------

def _uuid(value: str) -> uuid.UUID:
    """An id inside a token: a malformed one is a bad token (401), not a missing row."""
    return uuid.UUID(parse_uuid(value, InvalidToken))


def _verify_refresh(settings: Settings, token: str) -> tokens.Claims:
    """A refresh token's claims; expired or malformed both answer 401 invalid_token."""
    try:
        claims = tokens.verify(settings, token, tokens.REFRESH)
    except TokenExpired:
        raise InvalidToken("The refresh token has expired; log in again.") from None
    for value in (claims.user_id, claims.family_id, claims.jti):
        _uuid(value)
    return claims


async def _mark_revoked(settings: Settings, redis: Redis, keys: Keys, family_id: str, user_id: str) -> None:
    # Access tokens of the family live at most access_token_ttl_s: the marker must outlive them.
    # Marker first: a socket opening meanwhile re-checks it after registering for the event.
    await redis.set(keys.revoked_family(family_id), "1", ex=settings.access_token_ttl_s)
    await events.family_revoked(redis, keys, user_id, family_id)


async def refresh(settings: Settings, redis: Redis, keys: Keys, *, refresh_token: str) -> TokenPair:
    """Rotate a refresh token: exactly one use succeeds; a reused token revokes its family."""
    claims = _verify_refresh(settings, refresh_token)
    jti, family_id = _uuid(claims.jti), _uuid(claims.family_id)
    now = utcnow()
    username = claims.username
    if username is None:  # a refresh token from before the `usr` claim: look it up once
        names = await User.filter(id=_uuid(claims.user_id)).values_list("username_lower", flat=True)
        username = str(names[0]) if names else None
    pair, new_jti, expires_at = _issue_pair(settings, claims.user_id, claims.family_id, now, username)
    reused = False
    async with in_transaction() as conn:
        # Lock the family row: refreshes and logouts of one session queue behind each other,
        # so a logout cannot slip between "token marked used" and "next token stored".
        family = await (TokenFamily.filter(id=family_id, user_id=_uuid(claims.user_id))
                        .select_for_update().using_db(conn).first())
        if family is None or family.revoked_at is not None:
            raise InvalidToken("This session has ended; log in again.")
        used = await (RefreshToken.filter(jti=jti, family_id=family_id, used_at=None)
                      .using_db(conn).update(used_at=now))
        if used:
            await RefreshToken.create(jti=new_jti, family_id=family_id, expires_at=expires_at, using_db=conn)
        elif await RefreshToken.filter(jti=jti, family_id=family_id).using_db(conn).exists():
            # Already used: someone holds a copy. Revoke the whole session (committed below).
            await TokenFamily.filter(id=family_id).using_db(conn).update(revoked_at=now)
            reused = True
        else:
            raise InvalidToken()
    if reused:
        await _mark_revoked(settings, redis, keys, claims.family_id, claims.user_id)
        raise RefreshTokenReused()
    return pair


async def revoke_family(settings: Settings, redis: Redis, keys: Keys, family_id: str, user_id: str) -> None:
    """End a session: its refresh tokens are refused, its access tokens and sockets stop at once."""
    await TokenFamily.filter(id=_uuid(family_id), revoked_at=None).update(revoked_at=utcnow())
    await _mark_revoked(settings, redis, keys, family_id, user_id)


async def logout(settings: Settings, redis: Redis, keys: Keys, *, user_id: str, refresh_token: str) -> None:
    """Revoke the session of `refresh_token`, which must belong to the caller (else 401 invalid_token).

    Idempotent: logging out an already revoked session succeeds again.
    """
    claims = _verify_refresh(settings, refresh_token)
    if claims.user_id != user_id:
        # Not the caller's session: refuse without saying whose it is.
        raise InvalidToken("This refresh token does not belong to you.")
    await revoke_family(settings, redis, keys, claims.family_id, claims.user_id)


async def check_access_token(settings: Settings, redis: Redis, keys: Keys, token: str) -> tokens.Claims:
    """Verify an access token and that its login was not logged out (one Redis EXISTS)."""
    claims = tokens.verify(settings, token, tokens.ACCESS)
    if await redis.exists(keys.revoked_family(claims.family_id)):
        raise InvalidToken("This session has been logged out.")
    return claims
