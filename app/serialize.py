"""JSON encoding (orjson) and the API's timestamp format."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson


def dumps(obj: Any) -> str:
    """Serialize to a JSON string (used for HTTP bodies and WebSocket frames)."""
    # OPT_NON_STR_KEYS: sanic-ext's OpenAPI document keys responses by int status.
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z, as API.md requires."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_second_cache: list[Any] = [-1, ""]


def now_iso() -> str:
    """The current time as `iso(utcnow())` would give it, for the message accept path.

    Formats the date and time only when the second changes (strftime is a sizeable
    share of a send's CPU), then appends the milliseconds.
    """
    t = time.time()
    sec = int(t)
    if sec != _second_cache[0]:
        _second_cache[0], _second_cache[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
    return f"{_second_cache[1]}{int((t - sec) * 1000):03d}Z"
