"""Grandchildren die with their parent: Sanic's and Dramatiq's own worker processes.

The launcher arms PR_SET_PDEATHSIG on its direct children only; Sanic's manager and the
`dramatiq` process start theirs without one. Here the manager alone is SIGKILLed (not its
group, which would hide the question): every process it started must be gone soon after,
by PID (Sanic's serving workers and shared-context manager, multiprocessing's resource
tracker, Dramatiq's worker processes).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.env import TEST_ENV, isolated_env
from tests.support import Proc, ServerProc

GONE_S = 10.0


def _left(procs: list[psutil.Process], within: float) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        left = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _descendants(pid: int, at_least: int, within: float = 30.0) -> list[psutil.Process]:
    deadline = time.monotonic() + within
    while True:
        found = psutil.Process(pid).children(recursive=True)
        if len(found) >= at_least or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


@pytest.mark.timeout(90)
def test_sanic_workers_die_with_a_sigkilled_manager(tmp_path: Path) -> None:
    server = ServerProc({**TEST_ENV, "WORKERS": "2"}, name="orphan-server")
    try:
        server.wait_ready(60)
        kids = _descendants(server.pid, 4)  # 2 workers, the shared-context manager, the resource tracker
        assert len(kids) >= 4, [" ".join(k.cmdline()) for k in kids]
        os.kill(server.pid, signal.SIGKILL)  # the manager only
        assert _left(kids, GONE_S) == []
    finally:
        server.stop()


@pytest.mark.timeout(90)
def test_dramatiq_worker_processes_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    worker = Proc("orphan-worker", [sys.executable, "-m", "dramatiq", "tasks.worker", "--processes", "2",
                                    "--threads", "1"], isolated_env("orphans").env,  # no other test's jobs
                  log_path=tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while worker.output().count("Worker process is ready") < 2:
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)
        kids = psutil.Process(worker.pid).children(recursive=True)
        assert len(kids) >= 2
        os.kill(worker.pid, signal.SIGKILL)
        assert _left(kids, GONE_S) == [], worker.log_tail()
    finally:
        worker.stop()
