"""Shared route helpers: the `authenticated` decorator and the bearer-token parse."""

from __future__ import annotations

from functools import wraps
from typing import Any, Awaitable, Callable

from pydantic import BaseModel
from sanic import Request

from app.errors import InvalidToken
from app import auth


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticated(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Require a valid access token; sets request.ctx.user_id and request.ctx.claims."""

    @wraps(handler)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Any:
        token = bearer_token(request)
        if token is None:
            raise InvalidToken("Missing bearer token.")
        app = request.app
        claims = await auth.check_access_token(app.ctx.settings, app.ctx.redis, app.ctx.keys, token)
        request.ctx.user_id = claims.user_id
        request.ctx.claims = claims
        return await handler(request, *args, **kwargs)

    return wrapper


# -- OpenAPI schema of the error envelope, shared by every blueprint's docs ----------

class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorEnvelope(BaseModel):
    """Every error body: {"error": {"code", "message", "details"}}."""

    error: ErrorDetail
