"""Request parsing: JSON bodies into pydantic models, errors into the API's 400/422.

This is the door every client text passes: HTTP bodies and WebSocket frames go through
`parse_object`, query strings through `check_query`. Text PostgreSQL cannot store (NUL,
lone UTF-16 surrogates) is refused here with 422 naming the field, so it can never reach
a Redis stream (where one such row would block a room's flush for good) or a query.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from sanic import Request

from app.errors import MalformedJSON, PayloadTooLarge, ValidationFailed

M = TypeVar("M", bound=BaseModel)


# The same rule for the OpenAPI document, as a JSON Schema pattern (ASCII regex text that
# Python's re, ECMA-262 and Rust's regex all read). It names NUL only: no regex engine a
# validator uses can name a lone surrogate, and no JSON encoder of a real client emits one.
STORABLE_PATTERN = r"^[^\x00]*$"

# NUL and lone surrogates (a valid pair never reaches Python as two code points).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE_REASON = "must not contain NUL or unpaired surrogate characters"


def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or 400 malformed_json (413 over REQUEST_MAX_BYTES)."""
    raw = request.body
    # The server refuses a larger body before reading it (app/factory.py); this is the backstop.
    limit = request.app.ctx.settings.request_max_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(f"The JSON body is larger than {limit} bytes.", details={"limit": limit})
    if not raw.strip():
        raise MalformedJSON("The body is empty; it must be a JSON object.")
    return parse_object(raw, "body")


def parse_object(raw: str | bytes, what: str, *, check: bool = True) -> dict[str, Any]:
    """JSON text that must be an object (a request body, a WebSocket frame), or malformed_json.

    Also 422 when any string value in it, at any depth, has text PostgreSQL cannot store. (Numbers are each field's business: a seq is bounded where it is read.)
    """
    lenient = False
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        lenient = True
        # orjson refuses escaped lone surrogates ("\ud800") outright; the stdlib parser reads
        # them, so such a document is well-formed JSON with a bad field, which we can name.
        data = _lenient_loads(raw)
        if data is None:
            raise MalformedJSON(f"The {what} is not valid JSON.") from None
    if not isinstance(data, dict):
        article = "A" if what == "frame" else "The"
        raise MalformedJSON(f"{article} {what} must be a JSON object.")
    if check:
        check_object(data, surrogates=lenient)
    return data


def check_object(data: dict[str, Any], *, surrogates: bool = True) -> None:
    """The door's text rule on a parsed object (parse_object(check=False) + this: the caller
    can read the frame's client_id first, to name it in the error)."""
    # orjson never yields a lone surrogate, so its strings only need the (memchr-fast) NUL test.
    bad = first_bad_field(data, surrogates=surrogates)
    if bad is not None:
        raise ValidationFailed({bad[0]: bad[1]})


def is_echoable(text: str) -> bool:
    """No lone surrogate: safe to send back in a frame (a NUL is fine in JSON, only not in PostgreSQL)."""
    return _SURROGATE.search(text) is None


def _lenient_loads(raw: str | bytes) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, TypeError, RecursionError):
        return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def first_bad_field(value: Any, path: str = "", *, surrogates: bool = True) -> tuple[str, str] | None:
    """(field path, reason) of the first string value PostgreSQL cannot store, or None."""
    bad_text = _UNSTORABLE.search if surrogates else _has_nul
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, v = stack.pop()
        t = type(v)
        if t is str:
            if bad_text(v):
                return _printable(where) or "body", _UNSTORABLE_REASON
        elif t is dict:
            # Keys are only ever looked up, never stored: a strange one is an ignored field.
            stack.extend((f"{where}.{k}" if where else str(k), item) for k, item in v.items())
        elif t is list:
            stack.extend((f"{where}.{i}" if where else str(i), item) for i, item in enumerate(v))
    return None


def _has_nul(text: str) -> bool:
    return "\x00" in text


def _printable(name: str) -> str:
    return _UNSTORABLE.sub("\ufffd", name)


def check_query(args: Iterable[tuple[str, str]]) -> None:
    """Query-string parameters (already percent-decoded): 422 for text PostgreSQL cannot store."""
    for name, value in args:
        if _UNSTORABLE.search(name):
            raise ValidationFailed({_printable(name): "parameter names " + _UNSTORABLE_REASON})
        if _UNSTORABLE.search(value):
            raise ValidationFailed({name: _UNSTORABLE_REASON})


def check_text(fields: dict[str, str | None]) -> None:
    """Form fields and other text that does not come as JSON (multipart uploads)."""
    for name, value in fields.items():
        if value is not None and _UNSTORABLE.search(value):
            raise ValidationFailed({name: _UNSTORABLE_REASON})


def field_errors(exc: ValidationError) -> dict[str, str]:
    """pydantic errors -> {"field": "reason"} for details.fields."""
    out: dict[str, str] = {}
    for err in exc.errors():
        name = ".".join(str(p) for p in err.get("loc", ())) or "body"
        out.setdefault(name, err.get("msg", "invalid"))
    return out


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc)) from None


def body(request: Request, model: type[M]) -> M:
    """Parse and validate the request's JSON body as `model` (400 or 422 on failure)."""
    return parse(model, json_object(request))
