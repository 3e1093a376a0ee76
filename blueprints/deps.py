"""Shared route helpers: the `authenticated` decorator and the bearer-token parse."""

from __future__ import annotations

from functools import wraps
from typing import Annotated, Any, Awaitable, Callable, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from typing_extensions import TypeAliasType
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


# -- what the OpenAPI document declares about inputs (schemathesis holds us to it) --------

# A trimmed text of 1..n characters without control characters (names, display names): the
# server strips surrounding whitespace (str.strip) and then checks length and controls.
_CTRL = r"\x00-\x1f\x7f"
# A topic may have tabs and line breaks.
_CTRL_TOPIC = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"


def trimmed_pattern(max_chars: int, *, allow_empty: bool = False, multiline: bool = False) -> str:
    """The regex of what survives the server's strip + length + control-character checks."""
    ctrl = _CTRL_TOPIC if multiline else _CTRL
    core = rf"[^\s{ctrl}](?:[^{ctrl}]{{0,{max_chars - 2}}}[^\s{ctrl}])?"
    if allow_empty:
        core = f"(?:{core})?"
    return rf"^\s*{core}\s*$"


# Not whitespace only (message bodies: length is counted before the strip).
NOT_BLANK_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


StorableText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
# Any JSON value whose strings PostgreSQL can store (the door refuses the others at any depth).
StorableValue = TypeAliasType(  # type: ignore[misc]
    "StorableValue",
    Union[StorableText, int, float, bool, None, list["StorableValue"], dict[str, "StorableValue"]])  # noqa: UP007


class JsonBody(BaseModel):
    """Base of every JSON request body: unknown keys are ignored, but their strings pass the door
    too, and the schema says so (additionalProperties: StorableValue)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, StorableValue] = Field(init=False)  # type: ignore[assignment]


def body_schema(schema: dict[str, Any]) -> None:
    """json_schema_extra of a body model: optional fields without a misleading `default: null`."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            prop.pop("default")  # optional, not "null is a fine value" unless the type says so


def text_field(pattern: str, **extra: Any) -> dict[str, Any]:
    """json_schema_extra for a string field: its pattern (and any other keywords)."""
    return {"pattern": pattern, **extra}


def bigint(minimum: int, maximum: int, description: str) -> dict[str, Any]:
    """A query/path integer parameter with its real bounds (seqs and limits are bigints)."""
    from sanic_ext.extensions.openapi.types import Long

    # An empty value (`?limit=`) means absent: the server reads it as the default.
    return {"schema": Long(minimum=minimum, maximum=maximum), "description": description, "allowEmptyValue": True}
