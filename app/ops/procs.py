"""Child processes started and stopped by PID: the one helper the launcher, the tests and the bench use.

A `Proc` is a child that
- leads its own session and process group (Ctrl-C reaches only its parent, and stopping it
  also reaches what it spawned: Sanic's and Dramatiq's worker processes);
- gets PR_SET_PDEATHSIG (`death_signal`) set between fork and exec, so the kernel signals it
  when its parent dies, even by SIGKILL. Linux sends that signal when the forking *thread*
  ends, so it is only armed for children forked on the main thread (asyncio's executor
  threads end with their loop); if the parent died before prctl took effect the child
  exits at once;
- writes stdout and stderr to a log file (or stdout to a pipe the caller reads);
- is stopped with SIGTERM to the leader, SIGKILL to the whole group after a grace, and
  always reaped; the leader is only reaped by `stop()`/`wait()`, so its PID (the group id)
  cannot be reused while we may still signal the group.

Nothing here signals a process it did not start. `free_port()` is the one way to pick a port.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Callable, Mapping, Protocol

ROOT = Path(__file__).resolve().parents[2]

PR_SET_PDEATHSIG = 1
# Looked up once in the parent: between fork and exec the child must not import or allocate much.
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: rely on the normal teardown only
    _prctl = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent (thread) ends; no-op off Linux."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a worker process a library started (Sanic's serving processes, Dramatiq's worker
    processes): get `sig` when the process that started it dies, even by SIGKILL. Neither
    library arms this, and their workers outlive a killed manager (a Sanic worker then
    serves on, a Dramatiq worker keeps consuming). If the parent is already gone, `sig` now.
    """
    import multiprocessing

    set_pdeathsig(sig)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid != os.getppid():
        os.kill(os.getpid(), sig)


def can_pin() -> bool:
    """`taskset` exists and the machine has at least two cores we may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return False
    return shutil.which("taskset") is not None and cores >= 2


def pinned(argv: list[str], core: int | None) -> list[str]:
    """argv prefixed with `taskset -c core` when pinning is possible (taskset execs: same PID)."""
    return ["taskset", "-c", str(core), *argv] if core is not None and can_pin() else argv


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `pred` until true; returns the seconds it took, raises AssertionError on timeout."""
    start = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Registry(Protocol):
    """Told about every Proc that starts and every one that is stopped (a session's list, a reaper)."""

    def add(self, proc: "Proc") -> None: ...

    def discard(self, proc: "Proc") -> None: ...


class ProcSet:
    """A thread-safe set of running Procs, so whatever is left can be stopped at the end."""

    def __init__(self) -> None:
        self._procs: set[Proc] = set()
        self._lock = threading.Lock()

    def add(self, proc: "Proc") -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: "Proc") -> None:
        with self._lock:
            self._procs.discard(proc)

    def live(self) -> list["Proc"]:
        with self._lock:
            return [p for p in self._procs if p.alive()]

    def stop_all(self, timeout: float = 5.0) -> list[str]:
        """Stop every Proc still registered; returns the names of those that were running."""
        with self._lock:
            procs = list(self._procs)
        names = [p.name for p in procs if p.alive()]
        for p in procs:
            try:
                p.stop(timeout)
            except Exception:  # noqa: BLE001 - best effort at exit: the next one still gets stopped
                p.signal_group(signal.SIGKILL)
        return names


def _preexec(death_signal: int | None, parent_pid: int) -> None:
    """In the forked child, before exec (after Popen's setsid/setuid: a credential change clears it)."""
    if death_signal is not None:
        set_pdeathsig(death_signal)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)


class Proc:
    """A child process in its own process group, dying with its parent; see the module docstring.

    `env` is laid over `base_env` (default: this process's environment). `stdout` may be
    subprocess.PIPE (read `popen.stdout`); stderr then goes to the log, or into the pipe
    when there is no log. `user` runs the child as that system user (PostgreSQL refuses
    root). `core` pins it to one CPU (taskset). `registry` is told when it starts and stops.
    """

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str] | None = None, *,
                 log_path: Path | None = None, base_env: Mapping[str, str] | None = None,
                 cwd: Path = ROOT, death_signal: int | None = signal.SIGTERM, user: str | None = None,
                 core: int | None = None, stdin: int | IO[bytes] | None = None, stdout: int | None = None,
                 registry: Registry | None = None) -> None:
        self.name = name
        self.argv = pinned(argv, core)
        self.log_path = log_path
        self._registry = registry
        self._log: IO[bytes] | None = None
        self._done = False  # stopped and reaped: the group id may belong to someone else now
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "ab")
        full_env = {**(os.environ if base_env is None else base_env), **(env or {}), "PYTHONUNBUFFERED": "1"}
        on_main = threading.current_thread() is threading.main_thread()
        parent = os.getpid()
        sig = death_signal if on_main else None
        ids: dict[str, object] = {}
        if user is not None:
            import pwd

            pw = pwd.getpwnam(user)
            ids = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(user, pw.pw_gid)}
        self.popen = subprocess.Popen(
            self.argv, cwd=cwd, env=full_env, close_fds=True,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=stdout if stdout is not None else (self._log or subprocess.DEVNULL),
            stderr=self._log or subprocess.STDOUT,
            start_new_session=True, preexec_fn=(lambda: _preexec(sig, parent)) if sig is not None else None,
            **ids)  # type: ignore[arg-type]
        self.pid = self.popen.pid
        if registry is not None:
            registry.add(self)

    # -- state ---------------------------------------------------------------------------

    def returncode(self) -> int | None:
        """The exit code once the leader exited (negative: killed by that signal), without reaping it.

        The unreaped leader keeps its PID, hence the group id, reserved: signalling the group
        later cannot hit a stranger that got the PID again.
        """
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere (popen.wait in another thread)
            return self.popen.poll() if self.popen.returncode is None else self.popen.returncode
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def alive(self) -> bool:
        return self.returncode() is None

    def output(self) -> str:
        """The whole log so far ('' without a log)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    # -- readiness -----------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Whether the child serves yet; subclasses say how (a URL, a PING, a log line)."""
        return True

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.1) -> "Proc":
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early (code {self.returncode()}):\n{self.log_tail()}")
            if self.is_ready():
                return self
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(interval)

    # `with Proc(...) as p:` waits until it is ready and stops it however the block ends.
    def __enter__(self):  # noqa: ANN204 - returns the subclass's own type
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- signals -------------------------------------------------------------------------

    def signal_group(self, sig: int) -> None:
        """Signal the whole group (the process and what it spawned); the group id is our child's PID."""
        if self._done:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def send_signal(self, sig: int) -> None:
        """Signal the leader only (e.g. SIGINT to a launcher that stops its own children)."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """Ask the leader to stop (SIGTERM, to it alone; see stop()); does not wait."""
        if self.alive():
            self.signal_group(signal.SIGCONT)
            self.send_signal(signal.SIGTERM)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group while the leader runs (does not wait)."""
        if self.alive():
            self.signal_group(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to `timeout` for the leader to exit, without reaping it; its code or None."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Reap the leader (raises subprocess.TimeoutExpired)."""
        return self.popen.wait(timeout)

    def kill9(self, timeout: float = 10.0) -> None:
        """A crash: SIGKILL the whole group (no handler runs), reap the leader, release the log."""
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout)
        finally:
            self._close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the leader, SIGKILL the group after `timeout`; always reaps and kills leftovers.

        The leader alone gets SIGTERM: servers and `dramatiq` forward it to their own worker
        processes, and a worker that gets it twice (group + forwarded) takes it as "kill now"
        (Dramatiq then hangs ~10 s in its hard-kill path). SIGCONT first: a stopped process
        (a fault test's SIGSTOP) cannot handle SIGTERM. A second call does nothing.
        """
        if self._done:
            return
        if self.alive():
            self.terminate()
            self.wait_exit(timeout)
        # What is left of the group: a hung leader, or a worker process that outlived its manager.
        # The leader is not reaped yet, so the group id is still ours.
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(5)
        finally:
            self._close()

    def _close(self) -> None:
        self._done = True
        if self._log is not None and not self._log.closed:
            self._log.close()
        if self._registry is not None:
            self._registry.discard(self)


def serves(base_url: str, timeout: float = 1.0) -> bool:
    """Whether a chat server at `base_url` answers /readyz with 200: the one readiness probe."""
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:  # refused, timed out, or an HTTP error status (URLError is an OSError)
        return False


class ServerProc(Proc):
    """`python -m app.server` on loopback (`port`, or a free one); ready once /readyz answers 200.

    The tests and the bench subclass it only for their log directory, registry and pinning.
    """

    def __init__(self, env: Mapping[str, str], name: str = "server", port: int | None = None,
                 **options: object) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        super().__init__(name, [sys.executable, "-m", "app.server"],
                         {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}, **options)  # type: ignore[arg-type]

    def is_ready(self) -> bool:
        return serves(self.base_url)
