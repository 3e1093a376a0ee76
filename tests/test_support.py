"""The harness itself: children die with the test process, a hung test ends the run, media stays out of the repo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.env import MEDIA_ROOT, REPO_MEDIA, TEST_ENV
from tests.support import ROOT

pytestmark = pytest.mark.e2e

# Writes the PID of a Proc child it starts, then waits to be killed.
PARENT = """
import sys, time
from tests.support import Proc
child = Proc("pdeathsig-child-" + sys.argv[2], [sys.executable, "-c", "import time; time.sleep(120)"], {})
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie of an exited child is reaped by init once its parent is gone
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (OSError, IndexError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _wait_file(path: Path, proc: subprocess.Popen, within: float = 20) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} not written")


def test_a_child_dies_when_the_test_process_is_sigkilled(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pid_file), tmp_path.name], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    child = 0
    try:
        child = _wait_file(pid_file, parent)
        assert not _gone(child, 0.2), "the child did not even start"
        parent.kill()  # no teardown runs: only PR_SET_PDEATHSIG can stop the child now
        parent.wait(10)
        assert _gone(child, 5), f"child {child} outlived the killed test process"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if child and not _gone(child, 0):
            os.kill(child, signal.SIGKILL)  # only if the test already failed: never leave it running


HUNG_TEST = '''
import asyncio, sys, time
from tests.support import Proc

async def test_hangs_with_the_alarm_swallowed_by_a_background_task(tmp_path):
    child = Proc("hung-child-" + tmp_path.name, [sys.executable, "-c", "import time; time.sleep(120)"], {})
    open(PID_FILE, "w").write(str(child.pid))

    async def busy():  # the SIGALRM lands in here and asyncio only logs it
        while True:
            time.sleep(0.01)
            await asyncio.sleep(0)

    task = asyncio.create_task(busy())
    await asyncio.Event().wait()
'''


def test_a_hung_test_ends_the_run_and_its_processes(tmp_path: Path) -> None:
    """pytest-timeout's signal can be swallowed by asyncio; the backstop still ends the run."""
    suite = tmp_path / "suite"
    suite.mkdir()
    pid_file = tmp_path / "child.pid"
    (suite / "conftest.py").write_text("from tests.conftest import pytest_timeout_set_timer  # noqa: F401\n")
    (suite / "test_hung.py").write_text(f"PID_FILE = {str(pid_file)!r}\n" + textwrap.dedent(HUNG_TEST))
    (suite / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
                                      "timeout = 2\ntimeout_method = signal\n")
    env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(ROOT), "CHAT_TEST_TIMEOUT_BACKSTOP_S": "2",
           "TMPDIR": str(tmp_path)}  # the inner run's own temporary media dir lands here
    started = time.monotonic()
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)], cwd=suite,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    child = 0
    try:
        child = _wait_file(pid_file, run)
        out, _ = run.communicate(timeout=40)
        took = time.monotonic() - started
        assert run.returncode != 0, out
        assert "Timeout" in out and took < 30, (took, out[-3000:])
        assert _gone(child, 5), f"the hung test's child {child} survived the run"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        if child and not _gone(child, 0):
            os.kill(child, signal.SIGKILL)  # only if the test already failed: never leave it running


def test_the_session_media_root_is_a_temporary_directory_outside_the_repository() -> None:
    media = Path(MEDIA_ROOT).resolve()
    assert media.is_dir() and not media.is_relative_to(ROOT.resolve())
    assert TEST_ENV["MEDIA_ROOT"] == MEDIA_ROOT == os.environ["MEDIA_ROOT"]
    assert REPO_MEDIA.resolve() != media
