"""users routes (placeholder, filled in by the issue that owns it)."""

from __future__ import annotations

from sanic import Blueprint

bp = Blueprint("users")
