"""Message search (issue 12, docs/api.md "Search"): full-text over the rooms the caller is in."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext.extensions.openapi.types import String

from app import search as search_service
from app.errors import ValidationFailed
from app.pagination import parse_limit
from app.schemas import SearchPage
from app.settings import Settings
from blueprints.deps import authenticated, doc, page_params, query

bp = Blueprint("search")

_MAX_Q = Settings.model_fields["search_max_query_chars"].default
# What app.search.parse_query accepts: at least one word character (a letter or digit: the
# words are what is searched), no NUL; its length is counted as sent.
Q_PATTERN = r"^[^\x00]*[^\W_][^\x00]*$"


@bp.get("/search")
@doc("Search the messages of the caller's rooms (or one of them), best match first",
     (200, SearchPage, "a page of hits"), tag="messages",
     errors=[(401, "invalid_token"), (403, "not_member: room_id is a public room the caller is not in"),
             (404, "room_not_found: room_id is unknown or a private room the caller is not in"),
             (422, "validation_failed: q missing, too long or without a word; bad limit or cursor")],
     params=[{"name": "q", "location": "query", "required": True,
              "schema": String(minLength=1, maxLength=_MAX_Q, pattern=Q_PATTERN),
              "description": f"the words to find: 1-SEARCH_MAX_QUERY_CHARS (default {_MAX_Q}) characters with "
                             "at least one letter or digit; every word but the last matches whole words, the last "
                             "also as a prefix"},
             query("room_id", str, "only this room (the caller must be a member)"),
             *page_params()])
@authenticated
async def search(request: Request) -> HTTPResponse:
    settings: Settings = request.app.ctx.settings
    q = request.args.get("q") or ""
    if not q:
        raise ValidationFailed({"q": "required"})
    if len(q) > settings.search_max_query_chars:
        raise ValidationFailed({"q": f"must be at most {settings.search_max_query_chars} characters"})
    limit = parse_limit(request)
    page = await search_service.search(request.app.ctx.resources, user_id=request.ctx.user_id, q=q,
                                       room_id=request.args.get("room_id") or None, limit=limit,
                                       cursor=request.args.get("cursor") or None)
    return json(page)
