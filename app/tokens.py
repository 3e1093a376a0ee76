"""JWT encoding and verification: access and refresh tokens.

Both kinds carry `sub`, `exp`, `iat`, `jti`, `iss`, `aud`, `fam` (the login's
refresh family), `typ` and `usr`, the lowercased username (mention counts key on it, so a
read needs no user lookup; a refresh passes it on; absent in older tokens). The kinds are mutually exclusive: `typ` is checked
on decode, so a refresh token never passes as an access token nor the reverse.
The algorithm is pinned on decode (no `alg: none`, no algorithm confusion).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import jwt

from app.errors import InvalidToken, TokenExpired
from app.settings import Settings

ACCESS = "access"
REFRESH = "refresh"


@dataclass(frozen=True)
class Claims:
    user_id: str
    family_id: str
    jti: str
    kind: str
    expires_at: datetime
    username: str | None = None  # `usr`: lowercased; None for tokens issued before it


def issue(settings: Settings, *, user_id: str, family_id: str, kind: str,
          jti: str | None = None, now: datetime | None = None, username: str | None = None) -> tuple[str, Claims]:
    """Sign a token of `kind`; returns the token and its claims."""
    now = now or datetime.now(timezone.utc)
    ttl = settings.access_token_ttl_s if kind == ACCESS else settings.refresh_token_ttl_s
    exp = now + timedelta(seconds=ttl)
    jti = jti or uuid.uuid4().hex
    payload = {
        "sub": user_id, "fam": family_id, "typ": kind, "jti": jti,
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
        "iat": int(now.timestamp()), "exp": int(exp.timestamp()),
    }
    name = username.lower() if username else None
    if name:
        payload["usr"] = name
    token = jwt.encode(payload, settings.jwt_secret, algorithm=settings.jwt_algorithm)
    return token, Claims(user_id, family_id, jti, kind, exp, name)


# Access tokens this process has verified: digest -> (claims, exp). A client presents the same
# access token on every request and every reconnect until it expires, and PyJWT's decode
# (base64, JSON, HMAC, claim checks) was 7% of a reconnect storm's server samples; a hit is one
# SHA-256, a dict lookup and the expiry check. Only a token that passed every check is kept,
# under the SHA-256 of the settings that checked it and its exact bytes (a forged token would
# need a second preimage), and time only moves forward, so a hit cannot accept what a fresh
# decode would refuse except by expiry, which is checked on each hit. Revocation (logout) is
# not a property of the token: callers check it every time (app/auth.py). The digest, not the
# token, is the key: every idle connection has its own token, and keeping the token strings
# cost ~0.7 KiB per connection (docs/performance.md, item 4). Bounded by TOKEN_CACHE_SIZE
# (oldest out first).
_verified: dict[bytes, tuple[Claims, int]] = {}


def verify(settings: Settings, token: str, kind: str) -> Claims:
    """Decode and check a token of `kind`; raise InvalidToken/TokenExpired (401)."""
    size = settings.token_cache_size if kind == ACCESS else 0
    if size:
        key = hashlib.sha256("\x00".join((settings.jwt_secret, settings.jwt_algorithm, settings.jwt_audience,
                                          settings.jwt_issuer, token)).encode()).digest()
        hit = _verified.get(key)
        if hit is not None:
            if hit[1] > time.time():  # PyJWT's rule, leeway 0: expired once exp <= now
                return hit[0]
            del _verified[key]
            raise TokenExpired()
    claims, exp = _decode(settings, token, kind)
    if size:
        while len(_verified) >= size:
            del _verified[next(iter(_verified))]
        _verified[key] = (claims, exp)
    return claims


def _decode(settings: Settings, token: str, kind: str) -> tuple[Claims, int]:
    try:
        payload = jwt.decode(
            token, settings.jwt_secret, algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired() from None
    except jwt.PyJWTError:
        raise InvalidToken() from None
    if payload.get("typ") != kind or not isinstance(payload.get("fam"), str):
        raise InvalidToken(f"This is not an {kind} token." if kind == ACCESS else f"This is not a {kind} token.")
    usr = payload.get("usr")
    return Claims(payload["sub"], payload["fam"], payload["jti"], kind,
                  datetime.fromtimestamp(payload["exp"], timezone.utc),
                  usr if isinstance(usr, str) and usr else None), payload["exp"]
