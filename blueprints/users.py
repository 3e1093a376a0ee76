"""User routes: the caller's own account and username search."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext.extensions.openapi.types import String

from app import users
from app.errors import InvalidToken, UserNotFound
from app.pagination import USERS, decode_cursor, page, parse_limit
from app.schemas import UserOut, UserPage, user_out
from app.validation import STORABLE_PATTERN
from blueprints.deps import authenticated, doc, page_params, query

bp = Blueprint("users")


@bp.get("/users/me")
@doc("The caller's own user", (200, UserOut, "The user"), errors=(401,))
@authenticated
async def me(request: Request) -> HTTPResponse:
    try:
        user = await users.get_user(request.ctx.user_id)
    except UserNotFound:
        # A valid token for an account that no longer exists: the session is meaningless.
        raise InvalidToken("This account no longer exists.") from None
    return json(user_out(user))


@bp.get("/users")
@doc("Users whose username starts with q (case-insensitive; % and _ literal)",
     (200, UserPage, "A page of users, by username"), errors=(401, 422),
     params=[*reversed(page_params("next_cursor of the previous page, as given (else 422)")),
             query("q", String(pattern=STORABLE_PATTERN), "username prefix; empty lists everyone")])
@authenticated
async def search(request: Request) -> HTTPResponse:
    q = request.args.get("q", "")
    limit = parse_limit(request)
    position = decode_cursor(request.args.get("cursor"), USERS)
    rows, last = await users.search_users(q, limit=limit, after=position[0] if position else None)
    return json(page([user_out(u) for u in rows], USERS.position(last) if last else None))
