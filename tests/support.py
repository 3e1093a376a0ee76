"""Helpers for end-to-end tests: real server, worker and scheduler processes on loopback.

Every process is started by the test session, tracked by PID and stopped by PID.
Logs go to var/test-logs/<name>.log so a failing test can be diagnosed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "var" / "test-logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process of the test session (server, worker, scheduler)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        # Own process group, so stopping it also stops its children (Sanic's worker processes).
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group (the process and what it spawned)."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(5)
        else:
            # Reap any leftover children of the group.
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


class ServerProc(Proc):
    """`python -m app.server` on a free loopback port."""

    def __init__(self, env: dict[str, str], name: str = "server", port: int | None = None) -> None:
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


def worker_argv(processes: int = 1, threads: int = 2, queues: list[str] | None = None) -> list[str]:
    """A real `dramatiq` worker over the project's actors."""
    argv = [sys.executable, "-m", "dramatiq", "tasks.worker", "--processes", str(processes),
            "--threads", str(threads)]
    if queues:
        argv += ["--queues", *queues]
    return argv
