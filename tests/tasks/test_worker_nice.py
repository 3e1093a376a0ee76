"""WORKER_NICE: the worker and the scheduler lower their own priority, every thread of theirs.

A user notices it as live latency that stays low while the worker flushes on the same core
(measured by `python -m bench stack`, never asserted in a timed test); what a test can hold
is that the real processes, started as `make run` starts them, run at that niceness.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from app.ops.procs import Proc
from tests.env import isolated_env
from tests.fill import start_worker, wait_worker_ready

pytestmark = [pytest.mark.e2e]


def thread_nices(pid: int) -> dict[int, int]:
    """tid -> nice of every thread of `pid` (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        out[int(tid)] = int(raw[raw.rfind(")") + 2:].split()[16])
    return out


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


async def test_the_worker_process_runs_every_thread_at_worker_nice() -> None:
    iso = isolated_env("nice")
    worker = start_worker("worker-nice", iso.env, WORKER_NICE="7")
    try:
        await wait_worker_ready(worker)
        (proc,) = children(worker.pid)  # --processes 1: the one process that runs the jobs
        nices = thread_nices(proc)
        assert len(nices) > 4  # main, the AsyncIO loop thread, 4 worker threads, ...
        assert set(nices.values()) == {7}, nices
    finally:
        worker.stop()


async def test_the_scheduler_runs_at_worker_nice() -> None:
    iso = isolated_env("nice-sched")
    sched = Proc("scheduler-nice", [sys.executable, "-m", "tasks.scheduler"], {**iso.env, "WORKER_NICE": "5"})
    try:
        for _ in range(300):  # bounded: 30 s for the imports, then main() renices itself
            if not sched.alive():
                raise AssertionError(f"scheduler exited:\n{sched.log_tail(60)}")
            if thread_nices(sched.pid).get(sched.pid) == 5:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # periodiq's own threads start after: they inherit it
        assert sched.alive(), sched.log_tail(60)
        nices = thread_nices(sched.pid)
        assert set(nices.values()) == {5}, nices
    finally:
        sched.stop()


def test_worker_nice_out_of_range_is_refused() -> None:
    from app.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="WORKER_NICE"):
        Settings.load(env={"WORKER_NICE": "20"})
    assert Settings.load(env={}).worker_nice == 10
