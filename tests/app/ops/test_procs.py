"""app.ops.procs: a child leads its own group, stops SIGTERM-then-SIGKILL, dies with its parent, logs.

Real processes (small Python children), no mocks. Dying with a SIGKILLed test process is in
tests/test_support.py; here the parent is a throwaway Python process we SIGKILL ourselves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from app.ops.procs import ROOT, Proc, ProcSet, free_port

pytestmark = pytest.mark.e2e

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]
# Ignores SIGTERM: only the SIGKILL after the grace can stop it.
STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(120)"]
# Starts a grandchild in the same group, prints its PID, and sleeps.
SPAWNER = [sys.executable, "-c", "import subprocess, sys, time; "
           "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
           "print(g.pid, flush=True); time.sleep(120)"]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _wait_log(proc: Proc, within: float = 10.0) -> str:
    deadline = time.monotonic() + within
    while not proc.output().strip():
        assert proc.alive() and time.monotonic() < deadline, proc.output()
        time.sleep(0.05)
    return proc.output()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_child_leads_its_own_group_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = Proc("sleeper", SLEEPER, log_path=tmp_path / "sleeper.log")
    try:
        assert _wait_log(proc).strip() == "up"
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert proc.alive() and proc.returncode() is None
        started = time.monotonic()
        proc.stop(timeout=5)
        assert time.monotonic() - started < 3
        assert proc.returncode() == -signal.SIGTERM and not proc.alive()
        proc.stop()  # a second stop does nothing
    finally:
        proc.kill9()


def test_stop_kills_after_the_grace_and_reaches_the_whole_group(tmp_path: Path) -> None:
    proc = Proc("stubborn", STUBBORN, log_path=tmp_path / "stubborn.log")
    spawner = Proc("spawner", SPAWNER, log_path=tmp_path / "spawner.log")
    try:
        _wait_log(proc)
        grandchild = int(_wait_log(spawner).split()[0])
        started = time.monotonic()
        proc.stop(timeout=1)
        took = time.monotonic() - started
        assert proc.returncode() == -signal.SIGKILL and 0.9 < took < 5
        spawner.stop(timeout=5)
        assert _gone(grandchild, 5), "the grandchild outlived its group's stop"
    finally:
        proc.kill9()
        spawner.kill9()


def test_the_context_manager_waits_until_ready_and_stops(tmp_path: Path) -> None:
    class Ready(Proc):
        def is_ready(self) -> bool:
            return "up" in self.output()

    with Ready("ready", SLEEPER, log_path=tmp_path / "ready.log") as proc:
        assert "up" in proc.output() and proc.alive()
    assert not proc.alive()

    with pytest.raises(RuntimeError, match="exited early"):
        with Ready("dies", [sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "dies.log"):
            pass


def test_a_registry_sees_starts_and_stops(tmp_path: Path) -> None:
    registry = ProcSet()
    a = Proc("a", SLEEPER, log_path=tmp_path / "a.log", registry=registry)
    b = Proc("b", SLEEPER, log_path=tmp_path / "b.log", registry=registry)
    a.stop()
    assert registry.live() == [b]
    assert registry.stop_all() == ["b"] and not b.alive() and registry.live() == []


PARENT = """
import sys
from pathlib import Path
from app.ops.procs import Proc
child = Proc("orphan", [sys.executable, "-c", "import time; time.sleep(120)"], log_path=Path(sys.argv[1]))
print(child.pid, flush=True)
import time; time.sleep(120)
"""


def test_a_child_dies_with_its_sigkilled_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "orphan.log")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not _gone(child, 0.2)
        parent.kill()  # no handler runs: only PR_SET_PDEATHSIG can stop the child
        parent.wait(10)
        assert _gone(child, 5), f"child {child} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if child and not _gone(child, 0):
            os.kill(child, signal.SIGKILL)  # only if the test already failed
