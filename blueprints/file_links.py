"""Signed media links: GET /files/{id}/url for members, and the check that lets a download
through with `?u=&exp=&sig=` instead of the Bearer header (app/file_links.py)."""

from __future__ import annotations

from functools import wraps
from typing import Any, Awaitable, Callable

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from app import file_links, files
from app.errors import InvalidToken
from app.schemas import MediaLinksOut, file_out
from blueprints.deps import authenticated, doc

bp = Blueprint("file_links")


def signed_or_authenticated(kind: file_links.Kind) -> Callable[..., Any]:
    """A download route: a valid signed link (sig, exp, u) or the usual Bearer token.

    The signed user goes on request.ctx.user_id, so the route's membership check runs
    for them exactly as for a Bearer caller.
    """

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        bearer_handler = authenticated(handler)

        @wraps(handler)
        async def wrapper(request: Request, file_id: str, *args: Any, **kwargs: Any) -> Any:
            if "sig" not in request.args:
                return await bearer_handler(request, file_id, *args, **kwargs)
            user_id, exp, sig = (request.args.get(k, "") for k in ("u", "exp", "sig"))
            if not (user_id and file_links.verify(request.app.ctx.settings, file_id=file_id, kind=kind,
                                                  user_id=user_id, exp=exp, sig=sig)):
                raise InvalidToken("The signed link is invalid or has expired.")
            request.ctx.user_id = user_id
            return await handler(request, file_id, *args, **kwargs)

        return wrapper

    return decorate


@bp.get("/files/<file_id:str>/url")
@doc("Short-lived signed links to a file and its thumbnail (members of its room)",
     (200, MediaLinksOut, "links usable without the Bearer header until expires_at"),
     errors=[(401, "invalid_token"), (404, "file_not_found (also: not a member of the file's room)")], tag="files")
@authenticated
async def signed_links(request: Request, file_id: str) -> HTTPResponse:
    """{url, thumbnail_url, expires_at}: links an <img> or a download link can use as they are."""
    f = await files.for_member(file_id=file_id, user_id=request.ctx.user_id)
    return json(file_links.links(request.app.ctx.settings, file_out(f), request.ctx.user_id))
