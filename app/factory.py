"""The app factory (Sanic's own pattern): build an app from settings, open nothing at import."""

from __future__ import annotations

from sanic import Sanic

from app.db import setup_db
from app.door import setup_request_limits
from app.errors import register_error_handlers
from app.gc_tuning import setup_gc
from app.logs import configure_logging
from app.realtime.fanout import setup_fanout
from app.resources import setup_resources
from app.serialize import dumps
from app.settings import Settings
from app.web import configure_docs
from blueprints import all_blueprints
from blueprints.metrics import setup_metrics


def create_app(settings: Settings | None = None, name: str = "chat") -> Sanic:
    """Build the Sanic app; resources open in before_server_start and live on app.ctx."""
    settings = settings or Settings.load()
    configure_logging(settings.log_level, settings.chat_log_format)  # app/logs.py: text or JSON
    app = Sanic(name, dumps=dumps)
    app.ctx.settings = settings
    app.config.WEBSOCKET_MAX_SIZE = settings.ws_max_frame_bytes
    # One heartbeat loop per process pings every connection each hello.heartbeat_s and closes
    # (1011) those that miss a pong (app/realtime/fanout.py); Sanic's keepalive task per connection is off.
    app.config.WEBSOCKET_PING_INTERVAL = None
    app.config.WEBSOCKET_PING_TIMEOUT = None
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.OAS_UI_DEFAULT = "swagger"
    app.config.OAS_URL_PREFIX = "/docs"
    app.config.OAS_AUTODOC = False
    configure_docs(app.config)  # /docs from our own Swagger UI copy, never a CDN
    app.ext.openapi.describe("Chat server API", version="1.0",
                             description="Real-time chat: see docs/api.md for the contract.")

    setup_db(app)
    setup_resources(app)
    register_error_handlers(app)
    setup_request_limits(app)  # REQUEST_MAX_SIZE: the JSON cap; uploads stream (app/door.py)

    for bp in all_blueprints():
        app.blueprint(bp)
    setup_fanout(app)
    setup_metrics(app)  # GET /metrics, request ids, JSON for Sanic's loggers (blueprints/metrics.py)
    setup_gc(app)  # a started server: start-up frozen, fewer collections (app/gc_tuning.py)
    return app
