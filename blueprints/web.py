"""The web client: its page at `/` (with a strict Content-Security-Policy) and its static files."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, file

from app.web import INDEX_HTML, STATIC_ROOT, page_csp, swagger_ui_root

bp = Blueprint("web")
bp.static("/static/swagger-ui", swagger_ui_root(), name="swagger_ui")
bp.static("/static", STATIC_ROOT, name="client")


@bp.get("/")
async def index(request: Request) -> HTTPResponse:
    """The single-page client; everything else it needs comes from /static and the API."""
    return await file(INDEX_HTML, mime_type="text/html; charset=utf-8", headers={
        "Content-Security-Policy": page_csp(request.headers.get("host")),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    })


@bp.on_response
async def static_headers(request: Request, response: HTTPResponse) -> None:
    """Static files: no sniffing, and revalidated so a new release is picked up at once."""
    if request.path.startswith("/static/"):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-cache")
