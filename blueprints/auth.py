"""Account and session routes: register, login, refresh, logout.

The "bearer" security scheme is registered here at start-up.
"""

from __future__ import annotations

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, empty, json

from app import auth
from app.errors import RateLimited
from app.schemas import LoginBody, RefreshBody, RegisterBody, TokenPairOut, UserOut, user_out
from app.store import ratelimit
from app.validation import body
from blueprints.deps import authenticated, doc

bp = Blueprint("auth")


# -- helpers -----------------------------------------------------------------

def client_ip(request: Request) -> str:
    """The caller's address: the proxy-reported one when Sanic is configured to trust it."""
    return request.remote_addr or request.ip or "unknown"


async def limit_auth(request: Request) -> None:
    """Per-IP budget for register/login (one bucket for both: they are the guessing surface)."""
    app = request.app
    s = app.ctx.settings
    wait = await ratelimit.hit(app.ctx.redis, app.ctx.keys.rate("auth", client_ip(request)),
                               s.rate_auth, s.rate_auth_window_s)
    if wait:
        raise RateLimited(wait)


@bp.before_server_start
async def _start(app: Sanic) -> None:
    app.ext.openapi.add_security_scheme("bearer", "http", bearer_format="JWT")
    await auth.warm_up(app.ctx.settings)


# -- routes ----------------------------------------------------------------

@bp.post("/auth/register")
@doc("Create an account", (201, UserOut, "The new user"), errors=(400, 409, 422, 429), body=RegisterBody,
     secured=False)
async def register(request: Request) -> HTTPResponse:
    await limit_auth(request)
    data = body(request, RegisterBody)
    user = await auth.register(request.app.ctx.settings, username=data.username, password=data.password,
                               display_name=data.display_name)
    return json(user_out(user), status=201)


@bp.post("/auth/login")
@doc("Log in: a new session with an access and a refresh token", (200, TokenPairOut, "The token pair"),
     errors=(400, 401, 422, 429), body=LoginBody, secured=False)
async def login(request: Request) -> HTTPResponse:
    await limit_auth(request)
    data = body(request, LoginBody)
    pair = await auth.login(request.app.ctx.settings, username=data.username, password=data.password)
    return json(pair.body())


@bp.post("/auth/refresh")
@doc("Rotate a refresh token: a new pair; reusing a used token revokes the session",
     (200, TokenPairOut, "The new token pair"), errors=(400, 401, 422), body=RefreshBody, secured=False)
async def refresh(request: Request) -> HTTPResponse:
    data = body(request, RefreshBody)
    ctx = request.app.ctx
    pair = await auth.refresh(ctx.settings, ctx.redis, ctx.keys, refresh_token=data.refresh_token)
    return json(pair.body())


@bp.post("/auth/logout")
@doc("End the session of a refresh token (it must be the caller's)",
     (204, None, "Logged out; the session's access tokens stop at once"), errors=(400, 401, 422), body=RefreshBody)
@authenticated
async def logout(request: Request) -> HTTPResponse:
    data = body(request, RefreshBody)
    ctx = request.app.ctx
    await auth.logout(ctx.settings, ctx.redis, ctx.keys, user_id=request.ctx.user_id,
                      refresh_token=data.refresh_token)
    return empty()
