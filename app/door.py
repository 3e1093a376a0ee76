"""What every request passes before a handler: body size caps and the query-string check.

REQUEST_MAX_SIZE is REQUEST_MAX_BYTES, the JSON cap: Sanic refuses a larger declared
Content-Length (413) before reading a byte of the body, and cuts a chunked body off at it,
before the whole body is buffered for a non-streaming route. The upload route streams (Sanic
lifts the cap for streaming handlers) and enforces its own (MAX_UPLOAD_BYTES + framing).

A refused body is then read to its end and discarded (never buffered), up to the upload
cap plus `drain_budget` in all: a client that is still sending when we answer only sees the
answer if we keep reading; closing on it makes the kernel reset the connection, and on a
real network the reset can overtake the answer. Past that the connection is closed. How
Sanic's stream is told so (its private limits) is app/glue.py's part.
"""

from __future__ import annotations

from sanic import Request, Sanic

from app.glue import drain_refused_body
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
    """After a refusal with the body unread: let Sanic read (and throw away) the rest, up to the
    upload cap plus the drain budget, then close the connection (Connection: close on the answer)."""
    settings: Settings = request.app.ctx.settings
    overall = max(settings.request_max_bytes, upload_body_cap(settings)) + drain_budget(settings)
    drain_refused_body(request, overall)  # Sanic's stream internals: app/glue.py


def setup_request_limits(app: Sanic) -> None:
    """JSON bodies capped at REQUEST_MAX_BYTES before buffering; query strings checked at the door."""
    app.config.REQUEST_MAX_SIZE = app.ctx.settings.request_max_bytes

    @app.on_request
    async def _check_query(request: Request) -> None:
        if request.query_string:
            check_query(request.query_args)
