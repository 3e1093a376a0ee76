"""GET /metrics as an operator scrapes it: a real server with two Sanic workers and a real worker
sharing one PROMETHEUS_MULTIPROC_DIR, real sends, real WebSockets, real Redis and PostgreSQL.

Every number is checked exactly against what the test did (its own Redis prefix, so its own
backlog and job queues), and against every worker: with WORKERS=2 a scrape is answered by
either, and each must report the sum of both (multiprocess mode).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app.errors import to_chat_error
from app.jobs import enqueue_sync
from tests.env import isolated_env
from tests.factories import make_room, make_user
from tests.support import Proc, ServerProc, worker_argv
from tests.wsclient import WS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str, headers: dict[str, str] | None = None) -> Samples:
    resp = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(own_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, Any, Path]]:
    isolated = isolated_env("metrics")
    metrics_dir = tmp_path_factory.mktemp("metrics")
    env = {**isolated.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "CHAT_LOG_FORMAT": "json"}
    server = own_server(env, workers=2)
    yield server, isolated, metrics_dir


def test_sends_websockets_backlog_queues_and_flush_are_counted_across_processes(stack: Any) -> None:
    server, isolated, metrics_dir = stack
    api = httpx.Client(base_url=server.base_url, timeout=10)
    alice = make_user(api)
    room = make_room(api, alice)
    path = f"/rooms/{room['id']}/messages"
    for i in range(6):
        # A new connection per send: Sanic's two workers share the socket, so both get some.
        with httpx.Client(base_url=server.base_url, timeout=10) as one:
            assert one.post(path, json={"body": f"m{i}", "client_id": f"c{i}"}, headers=alice.headers).status_code == 201
    assert api.post(path, json={"body": "m0", "client_id": "c0"}, headers=alice.headers).status_code == 200
    for _ in range(2):
        assert api.post(path, json={"body": "  "}, headers=alice.headers).status_code == 422
    assert api.post(f"/rooms/{uuid.uuid4()}/messages", json={"body": "x"}, headers=alice.headers).status_code == 404

    for _ in range(4):  # whichever worker answers, it reports both workers' counts
        s = scrape(server.base_url)
        assert value(s, "chat_messages_accepted_total", result="new") == 6
        assert value(s, "chat_messages_accepted_total", result="duplicate") == 1
        assert value(s, "chat_messages_rejected_total", reason="validation_failed") == 2
        assert value(s, "chat_messages_rejected_total", reason="room_not_found") == 1
        assert value(s, "chat_backend_up", service="redis") == 1
        assert value(s, "chat_backend_up", service="postgres") == 1
        assert value(s, "chat_backend_up", service="broker") == 1
        # No worker yet: all six are still only in Redis.
        assert value(s, "chat_unflushed_rooms") == 1
        assert value(s, "chat_unflushed_messages") == 6
        assert 0 <= value(s, "chat_unflushed_oldest_seconds") < 120
        assert ("chat_dead_letters", frozenset()) in s
        # Every process dispatches every event; each samples the lag about once a second.
        lag_count = value(s, "chat_fanout_lag_seconds_count")
        assert lag_count >= 1 and value(s, "chat_fanout_lag_seconds_sum") / lag_count < 5

    enqueue_sync(isolated.settings, "flush_room", room["id"])
    s = scrape(server.base_url)
    assert value(s, "chat_job_queue_depth", queue="default", state="ready") == 1

    async def websockets_counted() -> None:
        conns = [await WS.open(server.ws_url, alice.access_token) for _ in range(3)]
        try:
            wait_for(lambda: value(scrape(server.base_url), "chat_ws_connections") == 3, 10, "3 connections")
        finally:
            for ws in conns:
                await ws.close()
        wait_for(lambda: value(scrape(server.base_url), "chat_ws_connections") == 0, 10, "0 connections")

    asyncio.run(websockets_counted())

    # The worker on the same directory: its flush's rows show on the server's /metrics.
    worker = Proc(f"metrics-worker-{uuid.uuid4().hex[:6]}", worker_argv(processes=1, threads=2),
                  {**isolated.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        wait_for(lambda: value(scrape(server.base_url), "chat_flushed_rows_total") == 6, 30,
                 f"the worker's flush to be counted:\n{worker.log_tail()}")
        s = scrape(server.base_url)
        assert value(s, "chat_unflushed_messages") == 0 and value(s, "chat_unflushed_rooms") == 0
        assert value(s, "chat_job_queue_depth", queue="default", state="ready") == 0
    finally:
        worker.stop()
        api.close()


def test_the_endpoint_is_loopback_only_without_a_token_and_needs_the_token_with_one(stack: Any,
                                                                                     own_server: Any) -> None:
    server, isolated, _ = stack
    # A proxy on this host connects from loopback too: what it forwards is refused.
    resp = httpx.get(f"{server.base_url}/metrics", headers={"X-Forwarded-For": "203.0.113.7"}, timeout=10)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    assert "METRICS_TOKEN" in resp.json()["error"]["message"]

    token = uuid.uuid4().hex
    guarded = own_server(isolated.env, METRICS_TOKEN=token)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token}):
        resp = httpx.get(f"{guarded.base_url}/metrics", headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    s = scrape(guarded.base_url, {"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.7"})
    assert value(s, "chat_backend_up", service="redis") == 1
    # Single-process mode (no PROMETHEUS_MULTIPROC_DIR): the process's own registry, with its runtime.
    assert ("process_cpu_seconds_total", frozenset()) in s


def test_a_backing_service_failure_is_counted_under_its_service() -> None:
    import asyncpg
    from redis.exceptions import ConnectionError as RedisConnectionError

    def count(service: str) -> float:
        return REGISTRY.get_sample_value("chat_backend_errors_total", {"service": service}) or 0.0

    before = {svc: count(svc) for svc in ("redis", "postgres")}
    assert to_chat_error(RedisConnectionError("refused")).status == 503
    assert to_chat_error(asyncpg.exceptions.CannotConnectNowError("starting")).status == 503
    assert to_chat_error(ValueError("a bug")).status == 500  # not a backing service: not counted
    assert count("redis") == before["redis"] + 1
    assert count("postgres") == before["postgres"] + 1
