"""Opaque cursors and the `limit` rule shared by every list endpoint."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from sanic import Request

from app.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def parse_limit(request: Request, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """`?limit=`: default 50, clamped to 200, below 1 (or not a number) is 422."""
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed({"limit": "must be an integer"}) from None
    if value < 1:
        raise ValidationFailed({"limit": "must be at least 1"})
    return min(value, maximum)


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(raw: str | None) -> dict[str, Any] | None:
    """The position a cursor stands for, or 422 when it was not made by us."""
    if not raw:
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ValidationFailed({"cursor": "malformed cursor"}) from None
    if not isinstance(data, dict):
        raise ValidationFailed({"cursor": "malformed cursor"})
    return data


def page(items: list[Any], next_position: dict[str, Any] | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": encode_cursor(next_position) if next_position else None}
