"""Processes the benchmark starts and measures: each one tracked by PID, stopped by PID.

The processes are app.ops.procs.Proc (the one process helper: own group, dies with the
benchmark, stopped by PID), with the bench's log directory, run id and CPU pinning.
Also the /proc readers (CPU seconds and RSS of a process tree).
Nothing here ever signals a process the benchmark did not start itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from app.ops import procs
from app.ops.procs import ROOT, can_pin, free_port, pinned  # noqa: F401 - the bench's names for them

LOG_DIR = ROOT / "var" / "bench-logs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Server and Redis share core 0; the load generator gets core 1 (the setup).
SERVER_CORE = 0
GENERATOR_CORE = 1


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by children); returns the new soft limit."""
    from app.server import raise_open_files_limit  # the server's own rule, shared

    return raise_open_files_limit()


# -- /proc readers ---------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2:].split()


def tree_pids(root: int) -> list[int]:
    """The root process and all its descendants (Sanic runs a manager plus worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo and len(out) < 10_000:  # bounded walk
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (a process that exited contributes nothing)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def pg_backend_pids(db_name: str) -> list[int]:
    """PostgreSQL backend processes serving `db_name` (their title is "postgres: <user> <db> ...")."""
    out = []
    needle = f" {db_name} ".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and needle in title:
            out.append(int(entry))
    return out


def core_busy_seconds(core: int) -> float:
    """CPU seconds core `core` spent busy since boot (/proc/stat: all but idle and iowait).

    Minus what our pinned processes used there, this is the load of others on that core: the
    machine is shared, and a step disturbed by it should say so beside its numbers."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def tree_cpu_seconds(root: int) -> float:
    return cpu_seconds(tree_pids(root))


def tree_rss_bytes(root: int) -> int:
    return rss_bytes(tree_pids(root))


# -- child processes ----------------------------------------------------------

class Proc(procs.Proc):
    """A child of the benchmark: log var/bench-logs/<run_id>-<name>.log, optionally pinned to `core`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 core: int | None = None, stdout: int | None = None, stdin: int | None = None,
                 run_id: str = "") -> None:
        super().__init__(name, argv, env, log_path=LOG_DIR / f"{run_id or 'bench'}-{name}.log",
                         core=core, stdout=stdout, stdin=stdin)


# The AOF fsync policy of the bench's Redis (`--redis-appendfsync`): everysec unless a run pairs
# policies, since the cost of always/everysec/no on delivery is what decides the shipped one.
REDIS_APPENDFSYNC = "everysec"


class RedisProc(Proc):
    """A private redis-server on a free loopback port, with AOF (appendfsync REDIS_APPENDFSYNC)."""

    def __init__(self, workdir: Path, run_id: str, core: int | None = SERVER_CORE) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or str(ROOT / ".venv" / "bin" / "redis-server")
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "yes", "--appendfsync", REDIS_APPENDFSYNC, "--dir", str(workdir),
                "--maxclients", "20000", "--protected-mode", "no", "--daemonize", "no"]
        super().__init__("redis", argv, core=core, run_id=run_id)

    def is_ready(self) -> bool:
        import redis as redis_sync

        client = redis_sync.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis_sync.RedisError:
            return False
        finally:
            client.close()

    def wait_ready(self, timeout: float = 10.0, interval: float = 0.05) -> "RedisProc":
        super().wait_ready(timeout, interval)
        return self


class ChatServerProc(procs.ServerProc):
    """`python -m app.server` for the benchmark (app.ops.procs.ServerProc), pinned to `core`."""

    def __init__(self, env: dict[str, str], run_id: str, name: str = "server",
                 core: int | None = SERVER_CORE) -> None:
        super().__init__(env, name, log_path=LOG_DIR / f"{run_id or 'bench'}-{name}.log", core=core)

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> "ChatServerProc":
        super().wait_ready(timeout, interval)
        return self



class LauncherProc(Proc):
    """`make run`'s process tree (app.ops.launcher: server + worker + scheduler) on loopback, pinned to `core`.

    The children inherit the launcher's CPU affinity, so the whole tree shares the server core
    with its Redis, as the issue measures it. `stop()` SIGTERMs the launcher alone: it stops its
    children itself (each in its own group) within its own grace.
    """

    def __init__(self, env: dict[str, str], run_id: str, name: str = "stack",
                 core: int | None = SERVER_CORE) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        super().__init__(name, [sys.executable, "-m", "app.ops.launcher", "--die-with-parent"],
                         {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}, core=core, run_id=run_id)

    def is_ready(self) -> bool:
        return procs.serves(self.base_url)

    def wait_ready(self, timeout: float = 90.0, interval: float = 0.2) -> "LauncherProc":
        super().wait_ready(timeout, interval)
        return self

    def stop(self, timeout: float = 40.0) -> None:  # the launcher's own grace is 20 s per child set
        super().stop(timeout)
