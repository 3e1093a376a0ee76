"""Account and session routes: register, login, refresh, logout.

Also home of `document_errors` (error responses in the OpenAPI document; the
envelope schema itself is `blueprints.deps.ErrorEnvelope`) and the user object (`UserOut`).
The "bearer" security scheme is registered here at start-up.
"""

from __future__ import annotations

from typing import Annotated, Callable, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, empty, json
from sanic_ext import openapi
from sanic_ext.extensions.openapi.definitions import Component

from app import auth
from app.store import ratelimit
from app.errors import RateLimited
from app.users import render_user
from app.validation import body
from app.validation import STORABLE_PATTERN
from blueprints.deps import JsonBody, ErrorEnvelope, authenticated, body_schema, text_field, trimmed_pattern

bp = Blueprint("auth")

T = TypeVar("T")


# -- OpenAPI schemas shared by the blueprints -------------------------------


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    created_at: str = Field(description="ISO 8601 UTC with milliseconds and Z")


_ERROR_TEXT = {
    400: "Malformed JSON, or a body that is not a JSON object",
    401: "Missing, invalid or expired token / wrong credentials",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    422: "Validation failed (details.fields maps field -> reason)",
    429: "Rate limited (see Retry-After)",
}


def document_errors(*statuses: int) -> Callable[[T], T]:
    """Document error responses (all in the error envelope) on a route."""

    def wrap(handler: T) -> T:
        for status in statuses:
            handler = openapi.response(str(status), {"application/json": Component(ErrorEnvelope)},
                                       _ERROR_TEXT.get(status, "Error"))(handler)
        return handler

    return wrap


# -- request and response bodies -------------------------------------------

Username = Annotated[str, StringConstraints(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
# No control characters: they render badly, and PostgreSQL refuses NUL outright.
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                               pattern=r"^[^\x00-\x1f\x7f]+$")]
# The documents say what the door (app/validation.parse_object) refuses in every string: NUL
# and lone surrogates. Only in the schema: pydantic's regex engine cannot name surrogates.
_STORABLE = text_field(STORABLE_PATTERN)


def _display_name_schema(schema: dict) -> None:
    """Document what the server checks after stripping, not DisplayName's own (pre-strip) keywords."""
    prop = schema["properties"]["display_name"]
    prop["anyOf"] = [{"type": "string"}, {"type": "null"}]
    body_schema(schema)


class RegisterBody(JsonBody):
    model_config = ConfigDict(json_schema_extra=_display_name_schema)

    username: Username = Field(description="3-32 of A-Z a-z 0-9 _ . -; unique case-insensitively")
    password: str = Field(min_length=8, max_length=128, json_schema_extra=_STORABLE)
    display_name: Optional[DisplayName] = Field(
        default=None, description="1-64 characters once surrounding whitespace is stripped, no control "
        "characters; defaults to the username", json_schema_extra=text_field(trimmed_pattern(64)))


class LoginBody(JsonBody):
    model_config = ConfigDict(json_schema_extra=body_schema)

    # Loose limits: a name or password that cannot exist simply fails as invalid_credentials;
    # the caps only bound the hashing work a request can ask for.
    username: str = Field(min_length=1, max_length=256, json_schema_extra=_STORABLE)
    password: str = Field(min_length=1, max_length=1024, json_schema_extra=_STORABLE)


class RefreshBody(JsonBody):
    model_config = ConfigDict(json_schema_extra=body_schema)

    refresh_token: str = Field(min_length=1, max_length=4096, json_schema_extra=_STORABLE)


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int = Field(description="access token lifetime in seconds")


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
@openapi.summary("Create an account")
@openapi.body({"application/json": Component(RegisterBody)}, required=True)
@openapi.response("201", {"application/json": Component(UserOut)}, "The new user")
@document_errors(400, 409, 422, 429)
async def register(request: Request) -> HTTPResponse:
    await limit_auth(request)
    data = body(request, RegisterBody)
    user = await auth.register(request.app.ctx.settings, username=data.username, password=data.password,
                               display_name=data.display_name)
    return json(render_user(user), status=201)


@bp.post("/auth/login")
@openapi.summary("Log in: a new session with an access and a refresh token")
@openapi.body({"application/json": Component(LoginBody)}, required=True)
@openapi.response("200", {"application/json": Component(TokenPairOut)}, "The token pair")
@document_errors(400, 401, 422, 429)
async def login(request: Request) -> HTTPResponse:
    await limit_auth(request)
    data = body(request, LoginBody)
    pair = await auth.login(request.app.ctx.settings, username=data.username, password=data.password)
    return json(pair.body())


@bp.post("/auth/refresh")
@openapi.summary("Rotate a refresh token: a new pair; reusing a used token revokes the session")
@openapi.body({"application/json": Component(RefreshBody)}, required=True)
@openapi.response("200", {"application/json": Component(TokenPairOut)}, "The new token pair")
@document_errors(400, 401, 422)
async def refresh(request: Request) -> HTTPResponse:
    data = body(request, RefreshBody)
    ctx = request.app.ctx
    pair = await auth.refresh(ctx.settings, ctx.redis, ctx.keys, refresh_token=data.refresh_token)
    return json(pair.body())


@bp.post("/auth/logout")
@openapi.summary("End the session of a refresh token (it must be the caller's)")
@openapi.secured("bearer")
@openapi.body({"application/json": Component(RefreshBody)}, required=True)
@openapi.response("204", {}, "Logged out; the session's access tokens stop at once")
@document_errors(400, 401, 422)
@authenticated
async def logout(request: Request) -> HTTPResponse:
    data = body(request, RefreshBody)
    ctx = request.app.ctx
    await auth.logout(ctx.settings, ctx.redis, ctx.keys, user_id=request.ctx.user_id,
                      refresh_token=data.refresh_token)
    return empty()
