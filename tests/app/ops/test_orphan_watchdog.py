"""The Sanic manager's orphan watchdog (app/server.py): a manager whose parent died must end
even when it ignores the death signal's shutdown (seen: a SIGTERM landing while a worker starts
leaves Sanic's manager running forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from app.ops.procs import ROOT, pid_alive, wait_until

# A "manager" that ignores SIGTERM (as the hung one effectively does), has a child of its own,
# arms the watchdog with a short grace and then sleeps forever.
MANAGER = textwrap.dedent("""
    import multiprocessing, signal, sys, time
    from app.server import watch_for_orphaning
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
    child.start()
    watch_for_orphaning(grace_s=0.5)
    print(child.pid, flush=True)
    time.sleep(600)
""")

# The parent that dies: starts the manager, prints both PIDs, then waits to be SIGKILLed.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    p = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
    print(p.pid, p.stdout.readline().decode().strip(), flush=True)
    time.sleep(600)
""")


def test_orphaned_manager_kills_its_children_and_exits() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, MANAGER], stdout=subprocess.PIPE, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    manager_pid = child_pid = 0
    try:
        manager_pid, child_pid = (int(x) for x in parent.stdout.readline().split())  # type: ignore[union-attr]
        time.sleep(1.0)
        assert pid_alive(manager_pid), "the watchdog must not fire while the parent lives"
        parent.kill()
        parent.wait()
        # Orphaned: the grace (0.5 s) and one poll (0.5 s) later, the manager and its child are gone.
        wait_until(lambda: not pid_alive(manager_pid) and not pid_alive(child_pid), 10.0,
                   "the orphaned manager and its child to exit")
    finally:
        for pid in (manager_pid, child_pid):
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
