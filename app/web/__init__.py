"""The web client's files (app/web/static) and the offline /docs page (Swagger UI from a wheel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEB_ROOT = Path(__file__).resolve().parent
STATIC_ROOT = WEB_ROOT / "static"
INDEX_HTML = STATIC_ROOT / "index.html"
SWAGGER_HTML = WEB_ROOT / "swagger.html"


def swagger_ui_root() -> Path:
    """Swagger UI's dist folder, as packaged by the swagger-ui-bundle wheel."""
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


def configure_docs(config: Any) -> None:
    """sanic-ext's /docs page takes Swagger UI from a CDN: point it at our own copy instead."""
    config.OAS_PATH_TO_SWAGGER_HTML = str(SWAGGER_HTML)
    config.OAS_UI_REDOC = False  # ReDoc would load from a CDN too; Swagger UI is the docs page


def page_csp(host: str | None) -> str:
    """A strict policy for the client: only our own scripts, styles and sockets; no inline code."""
    sockets = f" ws://{host} wss://{host}" if host and all(c not in host for c in " ;,'\"") else ""
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            f"connect-src 'self'{sockets}; font-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")
