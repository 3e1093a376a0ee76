"""Request parsing: JSON bodies into pydantic models, errors into the API's 400/422."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from sanic import Request

from app.errors import MalformedJSON, PayloadTooLarge, ValidationFailed

M = TypeVar("M", bound=BaseModel)


def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or 400 malformed_json (413 over REQUEST_MAX_BYTES)."""
    raw = request.body
    if not raw:
        return {}
    # Sanic's own cap is sized for uploads (MAX_UPLOAD_BYTES); JSON bodies get the smaller one.
    limit = request.app.ctx.settings.request_max_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(f"The JSON body is larger than {limit} bytes.", details={"limit": limit})
    return parse_object(raw, "body")


def parse_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """JSON text that must be an object (a request body, a WebSocket frame), or malformed_json."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJSON(f"The {what} is not valid JSON.") from None
    if not isinstance(data, dict):
        article = "A" if what == "frame" else "The"
        raise MalformedJSON(f"{article} {what} must be a JSON object.")
    return data


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
