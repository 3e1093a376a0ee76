"""Helpers for end-to-end tests: real server, worker and scheduler processes on loopback.

Every process is started by the test session, tracked by PID and stopped by PID.
Logs go to var/test-logs/<name>.log so a failing test can be diagnosed.

Use `Proc` (or `ServerProc`) for every process a test starts, and `free_port()` for its
port. Both are app.ops.procs (the one process helper): a child gets PR_SET_PDEATHSIG, so it
is signalled even when the test process is SIGKILLed or the hang backstop
(tests/conftest.py) os._exit()s, and `stop()` / `kill()` reach its whole process group.
`stop_all()` stops whatever is still running.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Mapping


from app.ops import procs
from app.ops.procs import free_port  # noqa: F401 - the one free_port, re-exported for tests

ROOT = procs.ROOT
LOG_DIR = ROOT / "var" / "test-logs"

# Every Proc of the test session, so the session's end (and the hang backstop) can stop leftovers.
_SESSION = procs.ProcSet()


class Proc(procs.Proc):
    """app.ops.procs.Proc with the session's log directory and registry.

    PR_SET_PDEATHSIG is SIGTERM by default, so a server still stops its own children; a
    child that ignores it is gone with the next normal teardown.
    """

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str],
                 base_env: Mapping[str, str] | None = None, death_signal: int = signal.SIGTERM,
                 log_path: Path | None = None) -> None:
        super().__init__(name, argv, env, log_path=log_path or LOG_DIR / f"{name}.log", base_env=base_env,
                         death_signal=death_signal, registry=_SESSION)


def live_procs() -> list[procs.Proc]:
    """Processes started through Proc that were not stopped yet."""
    return _SESSION.live()


def stop_all(timeout: float = 5.0) -> list[str]:
    """Stop every Proc still running; returns their names (a leak if the session expected none)."""
    return _SESSION.stop_all(timeout)


class ServerProc(procs.ServerProc):
    """app.ops.procs.ServerProc with the session's log directory and registry."""

    def __init__(self, env: Mapping[str, str], name: str = "server", port: int | None = None) -> None:
        super().__init__(env, name, port, log_path=LOG_DIR / f"{name}.log", registry=_SESSION)


class OwnServers:
    """What the `own_server` fixture hands a test: call it to start a ready server of the test's own.

    `own_server(env=None, workers=None, name="own", port=None, **ENV)` starts `python -m
    app.server` with `base_env`, then `env`, then the keyword variables, and returns it once
    /readyz answers. Every server started is stopped by `stop_all()` (the fixture's teardown);
    `with own_server(...) as proc:` stops it at the end of the block instead.
    """

    def __init__(self, base_env: Mapping[str, str], tag: str) -> None:
        self.base_env = dict(base_env)
        self.tag = tag
        self.started: list[ServerProc] = []

    def __call__(self, env: Mapping[str, str] | None = None, *, workers: int | None = None, name: str = "own",
                 port: int | None = None, **variables: str) -> ServerProc:
        full = {**self.base_env, **(env or {}), **variables}
        if workers is not None:
            full["WORKERS"] = str(workers)
        proc = ServerProc(full, name=f"{name}-{self.tag}-{len(self.started)}", port=port)
        self.started.append(proc)
        try:
            return proc.wait_ready()
        except BaseException:
            proc.stop()
            raise

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


def worker_argv(processes: int = 1, threads: int = 2, queues: list[str] | None = None) -> list[str]:
    """A real `dramatiq` worker over the project's actors."""
    argv = [sys.executable, "-m", "dramatiq", "tasks.worker", "--processes", str(processes),
            "--threads", str(threads)]
    if queues:
        argv += ["--queues", *queues]
    return argv
