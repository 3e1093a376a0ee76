"""Fixtures of the fault suite: a whole deployment of our own per test.

`stack` gives a test its own redis-server (AOF everysec, data in a temp dir) and its own
PostgreSQL 15 cluster (a copy of one migrated template cluster per session: initdb and
the migrations run once, `python -m app.ops.cli migrate` against it), plus starters for the
real server, worker and scheduler processes. Faults only ever hit these. Everything is
stopped by PID when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from app.settings import Settings
from tests.env import TEST_ENV
from tests.faults._procs import (PG_BIN, WORKER_ARGV, AppProc, PgCluster, RedisServer, make_tmp, remove_tmp,
                                 start_scheduler, start_server, start_worker)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[PgCluster]:
    """One initdb'd, migrated and stopped cluster; each test starts a copy of it."""
    base = make_tmp("chat-faults-pgtpl-")
    cluster = PgCluster(base, base, name="pg-template")
    try:
        cluster.init().start()
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port),
                        "-U", "postgres", "chat"], check=True, capture_output=True)
        env = {**os.environ, "DATABASE_URL": cluster.url(), "CHAT_ENV": "test"}
        out = subprocess.run([sys.executable, "-m", "app.ops.cli", "migrate"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"migrate failed:\n{out.stdout}\n{out.stderr}"
        cluster.stop()
        yield cluster
    finally:
        cluster.stop()
        remove_tmp(base)


class Stack:
    """One test's deployment: Redis, PostgreSQL, and the project's processes on them."""

    def __init__(self, tmp: Path, template: PgCluster, extra_env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir()
        (tmp / "media").mkdir()
        self.redis = RedisServer(tmp / "redis", self.log_dir)
        self.pg = PgCluster(tmp / "pg", self.log_dir).copy_from(template)
        self.procs: list[AppProc] = []
        self.env: dict[str, str] = {
            **os.environ, **TEST_ENV,
            "DATABASE_URL": self.pg.url(), "REDIS_URL": self.redis.url, "REDIS_PREFIX": "chat",
            "MEDIA_ROOT": str(tmp / "media"), "PYTHONUNBUFFERED": "1",
            # A killed worker's jobs come back, and its room leases lapse, within seconds.
            "BROKER_HEARTBEAT_TIMEOUT_S": "3", "FLUSH_LEASE_S": "3",
            "LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }

    def settings(self, **overrides: str) -> Settings:
        env = {k: v for k, v in self.env.items() if k.isupper()}
        return Settings.load(env={**env, **overrides}, env_file=None)

    def start_db(self) -> "Stack":
        self.redis.start()
        self.pg.start()
        return self

    def server(self, name: str = "server", **env: str) -> tuple[AppProc, str]:
        proc, base = start_server({**self.env, **env}, self.log_dir, name=name)
        self.procs.append(proc)
        return proc, base

    def worker(self, name: str = "worker", wait: bool = True, **env: str) -> AppProc:
        """The real worker; `wait`: return once it has booted (else at once)."""
        if wait:
            proc = start_worker({**self.env, **env}, self.log_dir, name=name)
        else:
            proc = AppProc(name, WORKER_ARGV, {**self.env, **env}, self.log_dir)
        self.procs.append(proc)
        return proc

    def scheduler(self, name: str = "scheduler", **env: str) -> AppProc:
        proc = start_scheduler({**self.env, **env}, self.log_dir, name=name)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        # A throwaway deployment: its graceful shutdown is not under test, and waiting for
        # each process to drain (periodiq ignores SIGTERM while it sleeps) costs seconds.
        for proc in reversed(self.procs):
            if proc.alive():
                proc.kill9()
            else:
                proc.stop()
        self.redis.stop()
        self.pg.stop()


@pytest.fixture
def stack(pg_template: PgCluster, request: pytest.FixtureRequest) -> Iterator[Stack]:
    tmp = make_tmp("chat-faults-")
    st = Stack(tmp, pg_template)
    try:
        st.start_db()
        yield st
    finally:
        st.close()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            # Keep the logs of a failed test for diagnosis; the data dirs are dropped.
            keep = ROOT / "var" / "test-logs" / f"faults-{request.node.name}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(st.log_dir, keep)
            print(f"\nlogs of the failed test kept in {keep}")
        remove_tmp(tmp)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
