"""Opaque cursors and the `limit` rule shared by every list endpoint."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime
from typing import Any, Callable

import orjson
from sanic import Request

from app.errors import ValidationFailed
from app.validation import BIGINT_MAX

_USERNAME = re.compile(r"[A-Za-z0-9_.-]*")
MAX_CURSOR_CHARS = 512  # ours are under 120; a longer one is not worth decoding

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def parse_limit(request: Request, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """`?limit=`: default 50, clamped to 200; below 1, above 2^63-1 or not an integer is 422."""
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed({"limit": "must be an integer"}) from None
    if value < 1:
        raise ValidationFailed({"limit": "must be at least 1"})
    if value > BIGINT_MAX:  # the documented type is a 64-bit integer; up to it, larger is clamped
        raise ValidationFailed({"limit": f"must be at most {BIGINT_MAX}"})
    return min(value, maximum)


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def _iso_time(v: Any) -> bool:
    """An ISO 8601 timestamp with a zone (what our cursors hold)."""
    if type(v) is not str or len(v) > 40:
        return False
    try:
        return datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


def _uuid(v: Any) -> bool:
    if type(v) is not str or len(v) > 36:
        return False
    try:
        uuid.UUID(v)
    except ValueError:
        return False
    return True


def _bigint(v: Any) -> bool:
    return type(v) is int and 0 <= v <= BIGINT_MAX


def _username(v: Any) -> bool:
    return type(v) is str and len(v) <= 32 and _USERNAME.fullmatch(v) is not None


# Every cursor the server hands out, by its keys: rooms (created_at, id), members
# (joined_at, membership id), users (lower-cased username). A cursor of any other shape,
# or with a value of the wrong type, was not made by us: 422, never a query with it.
CURSOR_SHAPES: tuple[dict[str, Callable[[Any], bool]], ...] = (
    {"c": _iso_time, "i": _uuid},
    {"j": _iso_time, "i": _bigint},
    {"u": _username},
)


def decode_cursor(raw: str | None) -> dict[str, Any] | None:
    """The position a cursor stands for, or 422 when it was not made by us."""
    if not raw:
        return None
    if len(raw) > MAX_CURSOR_CHARS:
        raise ValidationFailed({"cursor": "malformed cursor"})
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ValidationFailed({"cursor": "malformed cursor"}) from None
    if not isinstance(data, dict):
        raise ValidationFailed({"cursor": "malformed cursor"})
    for shape in CURSOR_SHAPES:
        if data.keys() == shape.keys() and all(check(data[k]) for k, check in shape.items()):
            return data
    raise ValidationFailed({"cursor": "malformed cursor"})


def page(items: list[Any], next_position: dict[str, Any] | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": encode_cursor(next_position) if next_position else None}
