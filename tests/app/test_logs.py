"""CHAT_LOG_FORMAT=json: one JSON object per line, with the request, room and user ids where they exist.

The formatter and the request ids in-process (sanic-testing, real Redis behind the app); the
whole `make run` tree (launcher, server, worker, scheduler) as a user starts it, where every
line it prints must parse as one JSON object.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
import uuid

import pytest
from sanic.response import json as json_response

from app.factory import create_app
from app.logs import JsonFormatter, REQUEST_ID_HEADER, json_line
from app.settings import Settings


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("chat.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_record_is_one_json_line_with_the_ids_it_names() -> None:
    room, user = str(uuid.uuid4()), str(uuid.uuid4())
    line = JsonFormatter().format(_record("flush room=%s rows=%d\nsecond line", room, 3, user_id=user))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING" and out["logger"] == "chat.test"
    assert out["msg"] == f"flush room={room} rows=3\nsecond line"
    assert out["room_id"] == room and out["user_id"] == user  # parsed from the text / given as extra
    assert out["ts"].endswith("+00:00") and isinstance(out["pid"], int)
    assert "request_id" not in out  # none outside a request

    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("chat.test", logging.ERROR, __file__, 1, "failed for user %s", (user,), sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert out["user_id"] == user and "ValueError: boom" in out["exc"]
    assert json.loads(json_line("plain text", "worker"))["logger"] == "worker"


@pytest.fixture
def app_and_log(settings: Settings):
    app = create_app(settings.replace(chat_log_format="json"), name=f"chat_test_{uuid.uuid4().hex[:8]}")
    room = str(uuid.uuid4())

    @app.get("/_log_probe")
    async def probe(request):  # noqa: ANN001, ANN202 - a route of this test only
        logging.getLogger("chat.probe").warning("probing room %s", room)
        return json_response({"ok": True})

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    chat = logging.getLogger("chat")
    chat.addHandler(handler)
    try:
        yield app, stream, room
    finally:
        chat.removeHandler(handler)


def test_a_request_id_is_honoured_or_made_echoed_and_in_the_lines_logged_meanwhile(app_and_log) -> None:
    app, stream, room = app_and_log
    _, resp = app.test_client.get("/_log_probe", headers={REQUEST_ID_HEADER: "req-42.a"})
    assert resp.status == 200 and resp.headers[REQUEST_ID_HEADER] == "req-42.a"
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["request_id"] == "req-42.a" and line["room_id"] == room and line["logger"] == "chat.probe"

    # None given, or one not fit for a header and a log line: a new one, different each time.
    ids = set()
    for headers in ({}, {REQUEST_ID_HEADER: "bad id\twith spaces"}, {REQUEST_ID_HEADER: "x" * 200}):
        _, resp = app.test_client.get("/_log_probe", headers=headers)
        rid = resp.headers[REQUEST_ID_HEADER]
        assert len(rid) == 32 and rid not in ids
        ids.add(rid)
        assert json.loads(stream.getvalue().splitlines()[-1])["request_id"] == rid
    # Error answers carry it too (the envelope comes from the error handler).
    _, resp = app.test_client.get("/nope", headers={REQUEST_ID_HEADER: "req-404"})
    assert resp.status == 404 and resp.headers[REQUEST_ID_HEADER] == "req-404"


@pytest.mark.timeout(150)
def test_make_run_in_json_mode_prints_only_json_lines(tmp_path) -> None:
    from tests.e2e.test_launcher import STOP_TIMEOUT_S, Launcher, _drop
    from app.ops.launcher import with_database
    from tests.env import ADMIN_DB_URL, REDIS_PREFIX, REDIS_URL, RUN_ID
    import asyncio

    dbname = f"chat_test_{RUN_ID}_json_logs"
    env = {"DATABASE_URL": with_database(ADMIN_DB_URL, dbname), "REDIS_URL": REDIS_URL,
           "REDIS_PREFIX": f"{REDIS_PREFIX}.jsonlogs", "EMBEDDED_SERVERS": "never", "CHAT_LOG_FORMAT": "json",
           "VAR_DIR": str(tmp_path / "var")}
    launcher = Launcher("launcher-json", env)
    try:
        launcher.wait_ready()
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(STOP_TIMEOUT_S) == 0
        lines = [ln for ln in launcher.output().splitlines() if ln.strip()]
        parsed = []
        for ln in lines:
            obj = json.loads(ln)  # raises on the first line that is not one JSON object
            assert isinstance(obj, dict) and {"ts", "level", "logger", "msg"} <= obj.keys(), ln
            parsed.append(obj)
        loggers = {o["logger"] for o in parsed}
        # The launcher's own lines, Sanic's, and the worker's and scheduler's (Dramatiq's and periodiq's).
        assert "launcher" in loggers and "sanic.server" in loggers, loggers
        assert any(name.startswith("dramatiq") for name in loggers), loggers
        assert any(name.startswith("periodiq") for name in loggers), loggers
        assert parsed[-1]["msg"] == "stopped"
        # The launcher gave every child one metrics directory, emptied at start.
        assert (tmp_path / "var" / "metrics").is_dir()
    finally:
        launcher.kill_all()
        asyncio.run(_drop(dbname))
