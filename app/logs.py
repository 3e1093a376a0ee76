"""Logging of every process (server, worker, scheduler, launcher): text, or one JSON object per line.

CHAT_LOG_FORMAT=text (default) keeps the human format; =json makes each record one line
`{"ts", "level", "logger", "msg", "pid", ...}` with `request_id`, `room_id` and `user_id`
when the record has them, so a log pipeline can filter one request or one room:

- request_id: the HTTP request (or WebSocket handshake) being served, from a contextvar set
  by `setup_request_ids` (the client's X-Request-Id if it is sane, else a new one; echoed
  in the response); tasks started while serving it inherit it;
- room_id / user_id: `extra={"room_id": ...}` of the call, else read from the message's
  `room=<id>` / `user <id>` wording the code already uses (cheap: one regex per record,
  only in JSON mode).

In JSON mode the handlers of Sanic's, Dramatiq's and periodiq's loggers (and the root
logger's) get the same formatter, so third-party lines are JSON too; a traceback is
the record's `exc` field, not extra lines.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
# Loggers that come with handlers of their own (Sanic's dictConfig, the CLIs' basicConfig).
FOREIGN_LOGGERS = ("", "sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets",
                   "dramatiq", "periodiq")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

REQUEST_ID_HEADER = "X-Request-Id"
# A client's id is kept when it is short and plain (it is copied into every log line and
# echoed in a header): letters, digits and -_.:/ only, at most 128 characters.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
_IDS = {
    "room_id": re.compile(r"\broom(?:_id)?[= ]([0-9a-fA-F][0-9a-fA-F-]{7,35})\b"),
    "user_id": re.compile(r"\buser(?:_id)?[= ]([0-9a-fA-F][0-9a-fA-F-]{7,35})\b"),
}


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(header: str | None) -> str:
    """The client's X-Request-Id when it is sane, else a fresh one."""
    if header and _SANE_ID.match(header):
        return header
    return new_request_id()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": msg,
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        for field, pattern in _IDS.items():
            value = getattr(record, field, None)
            if value is None:
                found = pattern.search(msg)
                value = found.group(1) if found else None
            if value is not None:
                out[field] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Our loggers ("chat.*") to stderr with the pid; in JSON mode every handler writes JSON.

    Idempotent (the factory runs once per Sanic process, tests build many apps)."""
    log = logging.getLogger("chat")
    if not log.handlers:
        handler = logging.StreamHandler()
        log.addHandler(handler)
        log.propagate = False
    for handler in log.handlers:
        handler.setFormatter(formatter(fmt))
    log.setLevel(level)
    if fmt == "json":
        json_everywhere()


def json_everywhere() -> None:
    """The JSON formatter on every handler the foreign loggers have now (call after they are set up)."""
    for name in FOREIGN_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(JsonFormatter())


def json_line(msg: str, logger: str, level: str = "INFO") -> str:
    """A line in the JSON format for text that did not come through logging (the launcher's own,
    a child's banner or traceback line)."""
    record = logging.LogRecord(logger, getattr(logging, level, logging.INFO), "", 0, msg, None, None)
    return JsonFormatter().format(record)


def setup_request_ids(app: Any) -> None:
    """Every HTTP request (and WebSocket handshake) gets a request id: the contextvar for the
    log lines written while serving it, request.ctx.request_id, and the X-Request-Id header
    of the response."""

    @app.on_request(priority=1000)  # first: the other middleware's log lines carry it
    async def _set_request_id(request: Any) -> None:
        rid = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.ctx.request_id = rid
        request_id_var.set(rid)

    @app.on_response(priority=1000)
    async def _echo_request_id(request: Any, response: Any) -> None:
        rid = getattr(request.ctx, "request_id", None)
        if rid and response is not None:
            response.headers[REQUEST_ID_HEADER] = rid
