"""HTTP and WebSocket routes only: parse, validate, call a service, render."""

from __future__ import annotations

from sanic import Blueprint


def all_blueprints() -> list[Blueprint]:
    from blueprints import auth, files, health, messages, rooms, users, ws
    from blueprints import media_urls, web

    return [health.bp, auth.bp, users.bp, rooms.bp, messages.bp, files.bp, ws.bp, media_urls.bp, web.bp]
