"""How big a request body may be, and how a refused one is read away so its answer arrives.

REQUEST_MAX_BYTES caps JSON bodies (Sanic enforces it before buffering, see app/door.py);
an upload may be MAX_UPLOAD_BYTES plus its multipart framing (`upload_body_cap`).

A refused body is read to its end and discarded (never buffered), up to the upload cap plus
`drain_budget` in all: a client that is still sending when we answer only sees the answer
if we keep reading; closing on it makes the kernel reset the connection, and on a real
network the reset can overtake the answer. Past that the connection is closed. How Sanic's
stream is told so (its private limits) is app/glue.py's part.

Separate from app/door.py so that the error handler (app/errors.py) can drain without
importing the door, which imports the validators, which import the errors.
"""

from __future__ import annotations

from sanic import Request

from app.glue import drain_refused_body
from app.settings import Settings

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
    drain_refused_body(request, overall)
