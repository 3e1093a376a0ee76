"""What every request passes before a handler: body size caps and the query-string check.

Sanic reads a non-streaming route's whole body before the handler runs, up to
REQUEST_MAX_SIZE, which must be large enough for uploads. So JSON routes get their own,
smaller cap (REQUEST_MAX_BYTES) per request, right after routing: a Content-Length above it
is refused (413) before a byte of the body is read, and a chunked body is cut off at it.

A refused body is then read to its end and discarded (never buffered), up to
REQUEST_MAX_SIZE in all: a client that is still sending when we answer only sees the 413
if we keep reading; closing on it makes the kernel reset the connection, and the answer
is lost. Past that budget the connection is closed.
"""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic

from app.settings import Settings
from app.validation import check_query

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the small text fields of an upload


def upload_body_cap(settings: Settings) -> int:
    """The largest upload request body: the file's limit plus the multipart framing."""
    return settings.max_upload_bytes + MULTIPART_OVERHEAD


def drain_budget(settings: Settings) -> int:
    """How much of a refused body the server reads and discards so the client gets the answer."""
    return max(settings.max_upload_bytes, settings.request_max_bytes)


def allow_drain(request: Request) -> None:
    """After a refusal mid-body: let Sanic read (and throw away) the rest up to REQUEST_MAX_SIZE,
    then close the connection (Connection: close on the answer)."""
    stream = request.stream
    if stream is None or not getattr(stream, "request_body", None):
        return
    protocol = getattr(stream, "protocol", None)
    overall = getattr(protocol, "request_max_size", None)
    if overall is not None:
        stream.request_max_size = overall  # type: ignore[union-attr]
    stream.keep_alive = False  # type: ignore[union-attr]


def setup_request_limits(app: Sanic) -> None:
    """JSON bodies capped at REQUEST_MAX_BYTES before buffering; query strings checked at the door."""

    @app.signal("http.routing.after")
    async def _cap_body(request: Request, route: Any, kwargs: Any, handler: Any) -> None:
        stream = request.stream
        # Streaming handlers (uploads) get Sanic's unlimited read and enforce their own cap.
        if stream is not None and stream.request_body and not hasattr(handler, "is_stream"):
            stream.request_max_size = min(stream.request_max_size, app.ctx.settings.request_max_bytes)

    @app.on_request
    async def _check_query(request: Request) -> None:
        if request.query_string:
            check_query(request.query_args)
