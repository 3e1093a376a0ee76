"""HTTP and WebSocket routes only: parse, validate, call a service, render."""

from __future__ import annotations

from sanic import Blueprint


def all_blueprints() -> list[Blueprint]:
    from blueprints import auth, files, health, messages, rooms, users, ws

    return [health.bp, auth.bp, users.bp, rooms.bp, messages.bp, files.bp, ws.bp]
