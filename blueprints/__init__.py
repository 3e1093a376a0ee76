"""HTTP and WebSocket routes only: parse, validate, call a service, render."""

from __future__ import annotations

from sanic import Blueprint


def all_blueprints() -> list[Blueprint]:
    from blueprints import auth, files, health, messages, rooms, search, users, ws
    from blueprints import file_links, web

    return [health.bp, auth.bp, users.bp, rooms.bp, messages.bp, search.bp, files.bp, ws.bp, file_links.bp, web.bp]
