"""Cross-process fan-out (placeholder: the real-time issue fills it in)."""

from __future__ import annotations

from sanic import Sanic


def setup_fanout(app: Sanic) -> None:
    return None
