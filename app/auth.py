"""Accounts and sessions: register, login, refresh rotation with reuse detection, logout.

(placeholder: the accounts helper fills this in; `check_access_token` is the interface
every authenticated route and the WebSocket use)
"""

from __future__ import annotations

from redis.asyncio import Redis

from app import tokens
from app.errors import InvalidToken
from app.keys import Keys
from app.settings import Settings


async def check_access_token(settings: Settings, redis: Redis, keys: Keys, token: str) -> tokens.Claims:
    """Verify an access token and that its login was not logged out (one Redis EXISTS)."""
    claims = tokens.verify(settings, token, tokens.ACCESS)
    if await redis.exists(keys.revoked_family(claims.family_id)):
        raise InvalidToken("This session has been logged out.")
    return claims
