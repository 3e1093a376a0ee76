"""Opaque cursors and the `limit` rule shared by every list endpoint: the one cursor parser.

A cursor is base64url(JSON object) of the last row's sort key. Each list has one shape
(`ROOMS`, `MEMBERS`, `USERS`): its keys and, per key, a reader that turns the JSON value
into the typed value the query needs or refuses it. A cursor of any other shape, or with a
value a reader refuses, was not made by us (or not for this list): 422 malformed cursor,
never a query with it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import orjson
from sanic import Request

from app.errors import ValidationFailed
from app.ids import canonical_uuid, is_bigint, is_canonical_uuid, parse_bigint
from app.users import could_be_username

MAX_CURSOR_CHARS = 512  # ours are under 120; a longer one is not worth decoding

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def parse_limit(request: Request, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """`?limit=`: default 50, clamped to 200; below 1, above 2^63-1 or not an integer is 422."""
    # The documented type is a 64-bit integer; up to it, larger is clamped.
    value = parse_bigint(request.args.get("limit"), "limit", 1)
    return default if value is None else min(value, maximum)


class _Refused(Exception):
    """A cursor value a reader does not accept."""


def _time(v: Any) -> datetime:
    """An ISO 8601 timestamp with a zone (what our cursors hold)."""
    if type(v) is not str or len(v) > 40:
        raise _Refused
    try:
        when = datetime.fromisoformat(v)
    except ValueError:
        raise _Refused from None
    if when.tzinfo is None:
        raise _Refused
    return when


def _uuid(v: Any) -> str:
    if not is_canonical_uuid(v):
        raise _Refused
    return canonical_uuid(v)  # type: ignore[return-value]


def _bigint(v: Any) -> int:
    if not is_bigint(v):
        raise _Refused
    return v  # type: ignore[no-any-return]


def _username(v: Any) -> str:
    if type(v) is not str or not could_be_username(v):
        raise _Refused
    return v


@dataclass(frozen=True)
class CursorShape:
    """The keys of one list's cursor, in order, each with the reader of its value."""

    readers: dict[str, Callable[[Any], Any]]

    def position(self, *values: Any) -> dict[str, Any]:
        """The JSON position of the last row of a page (what `page` encodes)."""
        return dict(zip(self.readers, values, strict=True))


# rooms by (created_at, id) newest first; members by (joined_at, membership id); users by
# lower-cased username.
ROOMS = CursorShape({"c": _time, "i": _uuid})
MEMBERS = CursorShape({"j": _time, "i": _bigint})
USERS = CursorShape({"u": _username})
# search results (app/search.py) by their offset in the merged, ranked list.
SEARCH = CursorShape({"o": _bigint})


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(raw: str | None, shape: CursorShape) -> tuple[Any, ...] | None:
    """The typed sort key a cursor of this list stands for (None without one), or 422."""
    if not raw:
        return None
    malformed = ValidationFailed({"cursor": "malformed cursor"})
    if len(raw) > MAX_CURSOR_CHARS:
        raise malformed
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise malformed from None
    if not isinstance(data, dict) or data.keys() != shape.readers.keys():
        raise malformed
    try:
        return tuple(read(data[k]) for k, read in shape.readers.items())
    except _Refused:
        raise malformed from None


def page(items: list[Any], next_position: dict[str, Any] | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": encode_cursor(next_position) if next_position else None}
