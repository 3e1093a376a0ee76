"""Helpers for end-to-end tests: real server, worker and scheduler processes on loopback.

Every process is started by the test session, tracked by PID and stopped by PID.
Logs go to var/test-logs/<name>.log so a failing test can be diagnosed.

Use `Proc` (or `ServerProc`) for every process a test starts, and `free_port()` for its
port: a child gets PR_SET_PDEATHSIG, so it is signalled even when the test process is
SIGKILLed or the hang backstop (tests/conftest.py) os._exit()s, and `stop()` / `kill()`
reach its whole process group. `stop_all()` stops whatever is still running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "var" / "test-logs"

PR_SET_PDEATHSIG = 1
# Looked up once in the parent: between fork and exec the child must not import or allocate much.
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: rely on the normal teardown only
    _prctl = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(sig: int, parent_pid: int) -> None:
    """preexec_fn: the child gets `sig` when the thread that forked it ends (the test process)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


_live: set["Proc"] = set()
_live_lock = threading.Lock()


class Proc:
    """A child process of the test session (server, worker, scheduler, redis-server, ...).

    It runs in its own session (so stopping it also stops what it spawned, e.g. Sanic's or
    Dramatiq's worker processes) and with PR_SET_PDEATHSIG=`death_signal` (SIGTERM by
    default, so a server still stops its own children; a child that ignores it is gone with
    the next normal teardown). Linux sends that signal when the forking *thread* exits, so
    only a Proc created on the main thread gets it (asyncio's executor threads end with each
    test's event loop); one created elsewhere relies on the normal teardown.
    """

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str],
                 base_env: Mapping[str, str] | None = None, death_signal: int = signal.SIGTERM,
                 log_path: Path | None = None) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.argv = argv
        self.log_path = log_path or LOG_DIR / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = {**(os.environ if base_env is None else base_env), **env, "PYTHONUNBUFFERED": "1"}
        parent = os.getpid()
        on_main = threading.current_thread() is threading.main_thread()
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=(lambda: _die_with_parent(death_signal, parent)) if on_main else None)
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        # The group id is our child's PID (start_new_session): only what we started gets it.
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group (the process and what it spawned) while the process runs."""
        if self.alive():
            self._signal_group(sig)

    def send_signal(self, sig: int) -> None:
        """Signal the process itself only (e.g. SIGINT to a launcher that stops its own children)."""
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process, SIGKILL the group after `timeout`; always reaps and kills leftovers.

        The leader alone gets SIGTERM: servers and `dramatiq` forward it to their own worker
        processes, and a worker that gets it twice (group + forwarded) takes it as "kill now"
        (Dramatiq then hangs ~10 s in its hard-kill path).
        """
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(5)
        # A child of the group that outlived its leader (a worker process of a dead manager).
        self._signal_group(signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        with _live_lock:
            _live.discard(self)


def live_procs() -> list[Proc]:
    """Processes started through Proc that were not stopped yet."""
    with _live_lock:
        return [p for p in _live if p.alive()]


def stop_all(timeout: float = 5.0) -> list[str]:
    """Stop every Proc still running; returns their names (a leak if the session expected none)."""
    with _live_lock:
        procs = list(_live)
    names = [p.name for p in procs if p.alive()]
    for p in procs:
        try:
            p.stop(timeout)
        except Exception:  # noqa: BLE001 - best effort at exit: the next one still gets stopped
            p._signal_group(signal.SIGKILL)
    return names


class ServerProc(Proc):
    """`python -m app.server` on a free loopback port."""

    def __init__(self, env: Mapping[str, str], name: str = "server", port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        super().__init__(name, [sys.executable, "-m", "app.server"],
                         {**env, "HOST": "127.0.0.1", "PORT": str(self.port)})

    def wait_ready(self, timeout: float = 30.0) -> "ServerProc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    # `with ServerProc(...) as proc:` waits until it serves and stops it however the block ends.
    def __enter__(self) -> "ServerProc":
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_argv(processes: int = 1, threads: int = 2, queues: list[str] | None = None) -> list[str]:
    """A real `dramatiq` worker over the project's actors."""
    argv = [sys.executable, "-m", "dramatiq", "tasks.worker", "--processes", str(processes),
            "--threads", str(threads)]
    if queues:
        argv += ["--queues", *queues]
    return argv
