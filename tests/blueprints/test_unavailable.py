"""Backing services failing under a real server (issue 9, point 5): 503 `service_unavailable`,
promptly, never a 500 or a hung request; and the server recovers when the service does.

The server here talks to a redis-server this test starts (stopped with SIGSTOP, filled to
its maxmemory, made a read-only replica) and to the session's PostgreSQL through a TCP
relay this test owns (cut to take PostgreSQL away). The shared services are never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Iterator

import httpx
import pytest
import redis as redis_sync

from tests.env import RUN_ID, TEST_ENV
from tests.factories import TestUser, make_room, make_user
from tests.support import OwnServers, Proc, ServerProc, free_port

pytestmark = pytest.mark.e2e

SOCKET_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 1.0
# One connect and one read timeout, plus the server's own work.
ANSWER_BOUND_S = SOCKET_TIMEOUT_S + CONNECT_TIMEOUT_S + 1.5


class Relay:
    """A loopback TCP relay to PostgreSQL that the test can cut (every connection reset) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        self.thread = threading.Thread(target=self._accept, args=(ls,), daemon=True)
        self.thread.start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """PostgreSQL is gone: refuse new connections and reset the open ones."""
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone keeps it listening
            except OSError:
                pass
            self.listener.close()
            self.listener = None
            if self.thread is not None:
                self.thread.join(5)
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv(); close alone would not
                s.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.cut()


class Stack:
    def __init__(self, server: ServerProc, redis_proc: Proc, redis_port: int, relay: Relay) -> None:
        self.server, self.redis_proc, self.relay = server, redis_proc, relay
        self.redis = redis_sync.Redis(port=redis_port, socket_timeout=5)
        self.api = httpx.Client(base_url=server.base_url, timeout=30.0)


@pytest.fixture(scope="module")
def stack(own_server: OwnServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from urllib.parse import urlsplit

    db = urlsplit(TEST_ENV["DATABASE_URL"])
    relay = Relay((db.hostname or "127.0.0.1", db.port or 5432))
    relay.start()
    redis_port = free_port()
    data = tmp_path_factory.mktemp("redis")
    redis_proc = Proc(f"unavail-redis-{RUN_ID}", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                                                  "--dir", str(data), "--save", "", "--appendonly", "no",
                                                  "--protected-mode", "no"], {})
    server = None
    try:
        client = redis_sync.Redis(port=redis_port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis_sync.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(redis_proc.log_tail())
                time.sleep(0.05)
        client.close()
        netloc = db.netloc.replace(f":{db.port}", f":{relay.port}") if db.port else f"{db.netloc}:{relay.port}"
        env = {**TEST_ENV, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "DATABASE_URL": db._replace(netloc=netloc).geturl(),
               "REDIS_SOCKET_TIMEOUT_S": str(SOCKET_TIMEOUT_S), "REDIS_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
               "MEDIA_ROOT": str(tmp_path_factory.mktemp("media"))}
        server = own_server(env, name="unavail-server")
        s = Stack(server, redis_proc, redis_port, relay)
        yield s
        s.api.close()
        s.redis.close()
    finally:
        if server is not None:
            server.stop()  # before its Redis and database go
        redis_proc.kill(signal.SIGCONT)
        redis_proc.stop()
        relay.stop()


@pytest.fixture(scope="module")
def alice(stack: Stack) -> tuple[TestUser, str]:
    user = make_user(stack.api)
    return user, make_room(stack.api, user)["id"]


def send(stack: Stack, user: TestUser, room: str, body: str = "hi") -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    resp = stack.api.post(f"/rooms/{room}/messages", json={"body": body}, headers=user.headers)
    return resp, time.monotonic() - t0


def assert_503(resp: httpx.Response, service: str | None = "redis") -> None:
    assert resp.status_code == 503, resp.text
    err = resp.json()["error"]
    assert err["code"] == "service_unavailable", err
    if service is not None:
        assert err["details"].get("service") == service, err


def test_stopped_redis_gives_503_within_the_timeouts_then_recovers(stack: Stack, alice) -> None:
    user, room = alice
    assert send(stack, user, room)[0].status_code == 201
    os.kill(stack.redis_proc.pid, signal.SIGSTOP)
    try:
        timings = []
        for _ in range(3):
            resp, took = send(stack, user, room)
            assert_503(resp)
            timings.append(took)
        print(f"stopped Redis: 503 after {', '.join(f'{t:.2f}s' for t in timings)} (bound {ANSWER_BOUND_S}s)")
        assert max(timings) < ANSWER_BOUND_S, timings
        # The timeout really was what ended the wait (Redis never answered).
        assert min(timings) >= SOCKET_TIMEOUT_S * 0.8, timings
    finally:
        os.kill(stack.redis_proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while True:
        resp, _ = send(stack, user, room, "after")
        if resp.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.status_code == 201, resp.text


def test_redis_out_of_memory_is_503(stack: Stack, alice) -> None:
    user, room = alice
    stack.redis.config_set("maxmemory-policy", "noeviction")
    stack.redis.config_set("maxmemory", "1")
    try:
        resp, _ = send(stack, user, room)
        assert_503(resp)
        # Creating a room touches Redis too (the member set): same answer, nothing half-made visible.
        resp = stack.api.post("/rooms", json={"name": "oom"}, headers=user.headers)
        assert resp.status_code in (201, 503), resp.text
        if resp.status_code == 503:
            assert_503(resp)
    finally:
        stack.redis.config_set("maxmemory", "0")
    assert send(stack, user, room)[0].status_code == 201


def test_read_only_redis_is_503(stack: Stack, alice) -> None:
    user, room = alice
    dead = free_port()  # nothing listens: the replica stays read-only and keeps its data
    stack.redis.execute_command("REPLICAOF", "127.0.0.1", str(dead))
    try:
        resp, _ = send(stack, user, room)
        assert_503(resp)
    finally:
        stack.redis.execute_command("REPLICAOF", "NO", "ONE")
    assert send(stack, user, room)[0].status_code == 201


def test_postgres_gone_is_503_then_recovers(stack: Stack, alice) -> None:
    user, room = alice
    assert stack.api.get("/rooms", headers=user.headers).status_code == 200
    stack.relay.cut()
    try:
        for _ in range(3):  # a reset pooled connection first, then refused new ones
            t0 = time.monotonic()
            resp = stack.api.get("/rooms", headers=user.headers)
            took = time.monotonic() - t0
            assert_503(resp, service=None)
            assert took < 15, took
        resp = stack.api.get(f"/rooms/{room}/members", headers=user.headers)
        assert_503(resp, service=None)
    finally:
        stack.relay.start()
    deadline = time.monotonic() + 15
    while True:
        resp = stack.api.get("/rooms", headers=user.headers)
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.status_code == 200, resp.text
