"""User routes: the caller's own account and username search."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext import openapi
from sanic_ext.extensions.openapi.definitions import Component
from sanic_ext.extensions.openapi.types import Long, String

from app import users
from app.errors import InvalidToken, UserNotFound, ValidationFailed
from app.pagination import decode_cursor, page, parse_limit
from app.validation import BIGINT_MAX, STORABLE_PATTERN
from blueprints.auth import UserOut, document_errors
from blueprints.deps import authenticated

bp = Blueprint("users")


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: Optional[str]


@bp.get("/users/me")
@openapi.summary("The caller's own user")
@openapi.secured("bearer")
@openapi.response("200", {"application/json": Component(UserOut)}, "The user")
@document_errors(401)
@authenticated
async def me(request: Request) -> HTTPResponse:
    try:
        user = await users.get_user(request.ctx.user_id)
    except UserNotFound:
        # A valid token for an account that no longer exists: the session is meaningless.
        raise InvalidToken("This account no longer exists.") from None
    return json(users.render_user(user))


@bp.get("/users")
@openapi.summary("Users whose username starts with q (case-insensitive; % and _ literal)")
@openapi.secured("bearer")
@openapi.parameter("q", String(pattern=STORABLE_PATTERN), "query", allowEmptyValue=True,
                   description="username prefix; empty lists everyone")
@openapi.parameter("limit", Long(minimum=1, maximum=BIGINT_MAX), "query", allowEmptyValue=True,
                   description="page size, default 50; any value above 200 is served as 200")
@openapi.parameter("cursor", str, "query", allowEmptyValue=True,
                   description="next_cursor of the previous page, as given (else 422)")
@openapi.response("200", {"application/json": Component(UserPage)}, "A page of users, by username")
@document_errors(401, 422)
@authenticated
async def search(request: Request) -> HTTPResponse:
    q = request.args.get("q", "")
    limit = parse_limit(request)
    position = decode_cursor(request.args.get("cursor"))
    after = None
    if position is not None:
        after = position.get("u")
        if not isinstance(after, str) or not users.could_be_username(after):
            raise ValidationFailed({"cursor": "malformed cursor"})
    rows, last = await users.search_users(q, limit=limit, after=after)
    return json(page([users.render_user(u) for u in rows], {"u": last} if last else None))
