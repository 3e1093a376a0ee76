"""Shared route helpers: the `authenticated` decorator, the bearer-token parse, and `doc`, the
one way a route describes itself in the OpenAPI document (its models are app/schemas.py's)."""

from __future__ import annotations

from functools import wraps
from typing import Any, Awaitable, Callable, Iterable, TypeVar, Union

from pydantic import BaseModel
from sanic import Request
from sanic_ext.extensions.openapi import openapi
from sanic_ext.extensions.openapi.definitions import Component, RequestBody, Response
from sanic_ext.extensions.openapi.types import Long

from app import auth
from app.errors import InvalidToken
from app.ids import BIGINT_MAX
from app.schemas import ErrorEnvelope

T = TypeVar("T")


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


# -- the OpenAPI document: one decorator per route ----------------------------------------

# What an error status means when a route says no more (the envelope is schemas.ErrorEnvelope).
ERROR_TEXT = {
    400: "Malformed JSON, or a body that is not a JSON object",
    401: "Missing, invalid or expired token / wrong credentials",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    422: "Validation failed (details.fields maps field -> reason)",
    429: "Rate limited (see Retry-After)",
}

# A success response: (status, body model | raw content | None for no body, description).
Ok = tuple[int, Union[type[BaseModel], dict[str, Any], None], str]
# An error response: a status (ERROR_TEXT's description) or (status, description); several
# descriptions of one status are joined with "; ".
Err = Union[int, tuple[int, str]]

BINARY = {"application/octet-stream": {"type": "string", "format": "binary"}}


def _content(model: type[BaseModel] | dict[str, Any] | None) -> dict[str, Any]:
    if model is None:
        return {}
    if isinstance(model, dict):
        return model
    return {"application/json": Component(model)}


def doc(summary: str, *ok: Ok, errors: Iterable[Err] = (), body: type[BaseModel] | None = None,
        form: bool = False, params: list[dict[str, Any]] | None = None, tag: str | None = None,
        secured: bool = True) -> Callable[[T], T]:
    """A route's whole OpenAPI entry: summary, request body (JSON, or multipart with `form`),
    query/path parameters, success responses and error responses in the error envelope."""
    by_status: dict[int, list[str]] = {}
    for err in errors:
        status, text = (err, ERROR_TEXT.get(err, "Error")) if isinstance(err, int) else err
        by_status.setdefault(status, []).append(text)
    # OpenAPI keys responses by status string.
    responses = [Response(_content(model), status=str(status), description=text)  # type: ignore[arg-type]
                 for status, model, text in ok]
    responses += [Response(_content(ErrorEnvelope), status=str(status),  # type: ignore[arg-type]
                           description="; ".join(texts)) for status, texts in sorted(by_status.items())]
    request_body = None
    if body is not None:
        request_body = RequestBody({"multipart/form-data" if form else "application/json": Component(body)},
                                   required=True)
    return openapi.definition(summary=summary, tag=tag, secured={"bearer": []} if secured else None,
                              parameter=params or None, response=responses, body=request_body)


def query(name: str, schema: Any, description: str, *, location: str = "query") -> dict[str, Any]:
    """A query (or path) parameter; an empty value (`?q=`) means absent, as the server reads it."""
    return {"name": name, "schema": schema, "location": location, "allowEmptyValue": True,
            "description": description}


def bigint(name: str, minimum: int, maximum: int, description: str, *, location: str = "query") -> dict[str, Any]:
    """An integer parameter with its real bounds (seqs and limits are bigints)."""
    return query(name, Long(minimum=minimum, maximum=maximum), description, location=location)


def page_params(cursor_text: str = "next_cursor of the previous page, as given (anything else is 422)"
                ) -> list[dict[str, Any]]:
    """`limit` and `cursor` of a list route (app/pagination.py reads them)."""
    return [bigint("limit", 1, BIGINT_MAX, "page size, default 50; any value above 200 is served as 200"),
            query("cursor", str, cursor_text)]
