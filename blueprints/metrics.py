"""GET /metrics: the Prometheus text exposition (app/metrics.py), not public by default.

METRICS_TOKEN empty: only a loopback client that did not come through a proxy may scrape
(a proxy on the same host connects from loopback too, so a request carrying Forwarded,
X-Forwarded-For or X-Real-IP is refused). METRICS_TOKEN set: `Authorization: Bearer
<token>` is required, from anywhere. Refusals use the API's error envelope.
"""

from __future__ import annotations

import hmac
import ipaddress

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, raw

from app import metrics
from app.errors import Forbidden, Unauthorized

bp = Blueprint("metrics")

PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:  # a unix socket or an unparsable peer
        return False


def check_scraper(request: Request, token: str) -> None:
    """Raise 401/403 unless this request may read the metrics."""
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("GET /metrics needs the header Authorization: Bearer <METRICS_TOKEN>.",
                               headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return
    if not _loopback(request.conn_info.client_ip if request.conn_info else "") or any(
            h in request.headers for h in PROXY_HEADERS):
        raise Forbidden("GET /metrics answers loopback clients only; set METRICS_TOKEN to scrape from elsewhere.")


@bp.get("/metrics")
async def get_metrics(request: Request) -> HTTPResponse:
    """Prometheus metrics of this deployment's processes (text exposition format)."""
    check_scraper(request, request.app.ctx.settings.metrics_token)
    return raw(await metrics.render(request.app), content_type=metrics.CONTENT_TYPE)


def setup_metrics(app: Sanic) -> None:
    """Mount GET /metrics and what goes with it (app.metrics.setup_metrics: request ids, JSON logs,
    the WebSocket gauge); the factory calls this once per app."""
    metrics.setup_metrics(app)
    app.blueprint(bp)
