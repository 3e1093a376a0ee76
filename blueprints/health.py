"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from app.db import ping_db
from app.errors import ServiceUnavailable

bp = Blueprint("health")

PROBE_TIMEOUT_S = 2.0


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    """The process is alive (no dependency checked)."""
    return json({"status": "ok"})


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    """PostgreSQL and Redis are reachable; 503 naming the ones that are not."""
    down: list[str] = []
    # Probes are made lazily: a coroutine created but never awaited would be leaked.
    for name, probe in (("postgres", ping_db), ("redis", request.app.ctx.redis.ping)):
        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            down.append(name)
    if down:
        raise ServiceUnavailable(f"Not ready: {', '.join(down)} unreachable.", details={"down": down})
    return json({"status": "ready", "postgres": "ok", "redis": "ok"})
