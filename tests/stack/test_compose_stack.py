"""The stack as docker/compose.yml describes it, run as local processes (no Docker engine here):
Redis with docker/redis.conf (AOF), a fresh PostgreSQL database, the one-shot migration, three
servers behind Debian's nginx running docker/nginx.conf, two workers and one scheduler, each
started with the service's own command and environment (Dockerfile ENV, env_file, then
`environment:`). Only what cannot be the same outside Docker is rewritten: service host names
become loopback addresses and ports, the container paths become temporary directories, and
nginx's upstream lists the three loopback servers instead of Docker's DNS name. A command or a
variable that would not start fails here, which keeps compose.yml and nginx.conf honest.

Then, under load through nginx (20 WebSocket clients in 4 rooms, sending with client_id):
kill -9 one server (its clients reconnect through nginx, `sync` from their last seq and resend
their unacked sends with the same client_id), kill -9 one worker while it is flushing, restart
both. At the end every acked message is delivered to every member of its room, once by id, and
is in PostgreSQL exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis as redis_sync
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.ops.procs import free_port, wait_until
from tests.env import ADMIN_DB_URL
from tests.factories import make_room, make_user
from tests.faults._procs import Proc, make_tmp, remove_tmp
from tests.stack import compose
from tests.wsclient import WS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SERVERS, WORKERS = 3, 2
ROOMS, CLIENTS = 4, 20
SEND_EVERY_S = 0.2  # per client: 20 clients -> ~100 messages/s
LOAD_S = 20.0

# Operator tuning on top of compose.yml for a 20-second test, each a documented setting
# (README's configuration table); nothing here is needed for the stack to start.
TUNING = {
    # One client IP (nginx on loopback) registers and logs in 20 users; 20 users send ~100/s.
    "RATE_AUTH": "1000", "RATE_MESSAGES": "1000",
    # Flushes happen during the load (not once a minute), so a worker can be killed mid-flush;
    # the killed worker's jobs and room leases come back within seconds, not 10 s.
    "FLUSH_BACKLOG_THRESHOLD": "50", "FLUSH_LEASE_S": "3", "BROKER_HEARTBEAT_TIMEOUT_S": "3",
}


# -- the stack ----------------------------------------------------------------------------

def _argv(command: list[str]) -> list[str]:
    """The image runs `python`: here, this interpreter (the project's venv)."""
    assert command, "service has no command"
    return [sys.executable if command[0] == "python" else command[0], *command[1:]]


def _rewrite_url(url: str, hosts: dict[str, str], what: str) -> str:
    """`scheme://user@<service>:<port>/...` -> the local address of that service."""
    m = re.fullmatch(r"(?P<scheme>[a-z+]+)://(?P<auth>[^@/]*@)?(?P<host>[^:/]+):(?P<port>\d+)(?P<rest>/.*)?", url)
    assert m, f"{what}={url!r} is not a URL with host:port"
    key = f"{m['host']}:{m['port']}"
    assert key in hosts, f"{what} points at {key}, which is no service of compose.yml ({sorted(hosts)})"
    return f"{m['scheme']}://{m['auth'] or ''}{hosts[key]}{m['rest'] or ''}"


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.procs: list[Proc] = []
        self.variables = {"JWT_SECRET": secrets.token_hex(32), "POSTGRES_PASSWORD": secrets.token_hex(16)}
        self.services = compose.load(self.variables)
        missing = {"postgres", "redis", "migrate", "server", "worker", "scheduler", "proxy"} - self.services.keys()
        assert not missing, f"compose.yml lacks services {missing}"
        self.db_name = f"chat_stack_{secrets.token_hex(4)}"
        self.redis_port = free_port()
        self.http_port = free_port()
        self.db_url_admin = ADMIN_DB_URL

    # one process, by PID, stopped in close()
    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        proc = Proc(name, argv, {**base, **env}, self.logs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                proc.kill9()
            else:
                proc.stop()

    # PostgreSQL: the machine's server, a fresh database for the compose file's user
    async def start_postgres(self) -> None:
        pg = self.services["postgres"].environment
        user, db = pg["POSTGRES_USER"], pg["POSTGRES_DB"]
        conn = await asyncpg.connect(self.db_url_admin)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user):
                try:
                    await conn.execute(f'CREATE ROLE "{user}" LOGIN')
                except asyncpg.DuplicateObjectError:  # another run created it just now
                    pass
            await conn.execute(f'CREATE DATABASE "{self.db_name}" OWNER "{user}"')
        finally:
            await conn.close()
        self.pg_db = db

    async def drop_postgres(self) -> None:
        conn = await asyncpg.connect(self.db_url_admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        finally:
            await conn.close()

    def start_redis(self) -> None:
        svc = self.services["redis"]
        mounts = {}
        for vol in svc.raw.get("volumes", []):
            src, dst, *_ = vol.split(":")
            mounts[dst] = src
        # The config file the command names is the one compose mounts there; inside it, the
        # data directory is a named volume's mount point: here a temp dir of the same name.
        argv = []
        for a in _argv(svc.command):
            if a in mounts:
                text = (compose.DOCKER / mounts[a]).read_text()
                for dst, src in mounts.items():
                    if not src.startswith("."):
                        (self.tmp / src).mkdir(exist_ok=True)
                        text = re.sub(rf"^dir\s+{re.escape(dst)}\s*$", f"dir {self.tmp / src}", text, flags=re.M)
                a = str(self.tmp / "redis.conf")
                Path(a).write_text(text)
            argv.append(a)
        assert str(self.tmp / "redis.conf") in argv, f"the redis command does not name its mounted config: {argv}"
        # Command-line options after the file override it: the loopback address and port.
        proc = self.spawn("redis", argv + ["--port", str(self.redis_port), "--bind", "127.0.0.1"], {})
        client = redis_sync.Redis(port=self.redis_port, socket_connect_timeout=1)
        try:
            def up() -> bool:
                assert proc.alive(), f"redis-server with docker/redis.conf exited:\n{proc.log_tail()}"
                try:
                    return bool(client.ping())
                except redis_sync.RedisError:
                    return False
            wait_until(up, 15, "redis-server to answer PING")
            assert client.config_get("appendonly")["appendonly"] == "yes", "redis.conf must enable the AOF"
            # everysec loses acks on a mere process crash (README, Durability): always is shipped.
            assert client.config_get("appendfsync")["appendfsync"] == "always"
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        finally:
            client.close()

    def app_env(self, service: str, port: int | None = None) -> dict[str, str]:
        env = dict(self.services[service].environment)
        hosts = {"postgres:5432": "127.0.0.1:5432", f"redis:6379": f"127.0.0.1:{self.redis_port}"}
        for key in ("DATABASE_URL", "REDIS_URL", "BROKER_URL"):
            if key in env:
                env[key] = _rewrite_url(env[key], hosts, key)
        if "DATABASE_URL" in env:
            assert env["DATABASE_URL"].endswith(f"/{self.pg_db}"), env["DATABASE_URL"]
            env["DATABASE_URL"] = env["DATABASE_URL"][: -len(self.pg_db)] + self.db_name
        for vol in self.services[service].raw.get("volumes", []):
            src, dst = vol.split(":")[:2]
            for k, v in env.items():
                if v == dst:  # e.g. MEDIA_ROOT=/app/media, the `media` volume
                    (self.tmp / src).mkdir(exist_ok=True)
                    env[k] = str(self.tmp / src)
        if port is not None:
            assert env.get("PORT") == "8000" == str(self.services["server"].raw["expose"][0]), \
                "the server's PORT (Dockerfile) must be the port compose exposes and nginx proxies to"
            env.update({"HOST": "127.0.0.1", "PORT": str(port)})
        return {**env, **TUNING}

    def migrate(self) -> None:
        proc = self.spawn("migrate", _argv(self.services["migrate"].command), self.app_env("migrate"))
        code = proc.wait_exit(90)
        assert code == 0, f"migrate exited with {code}:\n{proc.log_tail()}"

    # Processes are spawned from the main thread (their death signal follows the forking
    # thread) and awaited without blocking the loop: the clients keep running meanwhile.
    async def server(self, i: int, port: int) -> Proc:
        proc = self.spawn(f"server-{i}", _argv(self.services["server"].command), self.app_env("server", port))
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1) as http:
            while True:
                assert proc.alive(), f"server-{i} exited:\n{proc.log_tail()}"
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        return proc
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"server-{i} not ready in 30 s:\n{proc.log_tail()}"
                await asyncio.sleep(0.1)

    async def worker(self, i: int) -> Proc:
        proc = self.spawn(f"worker-{i}", _argv(self.services["worker"].command), self.app_env("worker"))
        await _until(lambda: "worker resources open" in proc.log_text(), 30, f"worker-{i} to boot", proc)
        return proc

    def scheduler(self) -> Proc:
        return self.spawn("scheduler", _argv(self.services["scheduler"].command), self.app_env("scheduler"))

    def nginx(self, server_ports: list[int]) -> Proc:
        proxy = self.services["proxy"]
        (conf_src,) = [v.split(":")[0] for v in proxy.raw["volumes"] if v.split(":")[1] == "/etc/nginx/nginx.conf"]
        text = (compose.DOCKER / conf_src).read_text()
        # The published port maps to the container port nginx listens on.
        (mapping,) = proxy.raw["ports"]
        container_port = mapping.rsplit(":", 1)[1]
        text, n = re.subn(rf"listen\s+{container_port}\s*;", f"listen 127.0.0.1:{self.http_port};", text)
        assert n == 1, f"nginx.conf must listen on {container_port}, the port compose publishes"
        # Docker's DNS name of the scaled service -> the three loopback servers.
        expose = self.services["server"].raw["expose"][0]
        upstream = "\n        ".join(f"server 127.0.0.1:{p};" for p in server_ports)
        text, n = re.subn(rf"server\s+server:{expose}\b[^;]*;", upstream, text)
        assert n == 1, f"nginx.conf's upstream must name the `server` service on its exposed port {expose}"
        text, n = re.subn(r"\n\s*resolver\s+127\.0\.0\.11\b[^;]*;", "\n", text)
        assert n <= 1
        prefix = self.tmp / "nginx"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(text)
        argv = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf),
                "-g", f"daemon off; pid {prefix / 'nginx.pid'};"]
        test = self.spawn("nginx-t", [*argv[:-2], "-t"], {})
        code = test.wait_exit(15)
        assert code == 0, f"nginx -t rejects docker/nginx.conf:\n{test.log_tail()}"
        proc = self.spawn("nginx", argv, {})

        def up() -> bool:
            assert proc.alive(), f"nginx exited:\n{proc.log_tail()}\n{(prefix / 'error.log').read_text()}"
            try:
                return httpx.get(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, 15, "nginx to proxy /readyz", 0.1)
        return proc


# -- a client as an app would write one -------------------------------------------------------

class Client:
    """Sends a message every SEND_EVERY_S with a fresh client_id, reconnects when the socket
    drops, then resends every unacked send with its client_id and syncs each room from the
    highest seq below which it has seen everything."""

    def __init__(self, n: int, url: str, token: str, home_room: str) -> None:
        self.n = n
        self.url = f"{url}?token={token}"
        self.home = home_room
        self.seen: dict[str, dict[int, str]] = defaultdict(dict)  # room -> seq -> id
        self.unacked: dict[str, str] = {}  # client_id -> body
        self.acked: dict[str, dict[str, Any]] = {}  # client_id -> message
        self.errors: list[dict[str, Any]] = []
        self.conflicts: list[str] = []
        self.connects = 0
        self.resent = 0
        self.k = 0
        self.sending = True
        self.stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.rooms: set[str] = set()

    def contiguous(self, room: str) -> int:
        seqs = self.seen[room]
        n = 0
        while n + 1 in seqs:
            n += 1
        return n

    def _see(self, m: dict[str, Any]) -> None:
        room, seq, mid = m["room_id"], int(m["seq"]), m["id"]
        had = self.seen[room].get(seq)
        if had is not None and had != mid:
            self.conflicts.append(f"room {room} seq {seq}: {had} and {mid}")
        self.seen[room][seq] = mid

    async def _sync(self, ws: WS, room: str) -> None:
        await ws.send({"type": "sync", "room_id": room, "after_seq": self.contiguous(room), "limit": 200})

    async def _reader(self, ws: WS) -> None:
        while True:
            frame = await ws.recv(30)
            kind = frame.get("type")
            if kind == "message":
                self._see(frame["message"])
            elif kind == "ack":
                self._see(frame["message"])
                cid = frame["client_id"]
                self.unacked.pop(cid, None)
                prev = self.acked.get(cid)
                if prev is not None and prev["id"] != frame["message"]["id"]:
                    self.conflicts.append(f"client_id {cid} acked as {prev['id']} and {frame['message']['id']}")
                self.acked[cid] = frame["message"]
            elif kind == "sync":
                for m in frame["messages"]:
                    self._see(m)
                if frame["has_more"]:
                    await self._sync(ws, frame["room_id"])
            elif kind == "resync":
                for room in [frame["room_id"]] if frame.get("room_id") else sorted(self.rooms):
                    await self._sync(ws, room)
            elif kind == "error":
                self.errors.append(frame)

    async def _sender(self, ws: WS) -> None:
        while not self.stop.is_set():
            if self.sending:
                self.k += 1
                cid = f"c{self.n}-{self.k}"
                self.unacked[cid] = f"client {self.n} message {self.k}"
                await ws.send({"type": "send", "room_id": self.home, "body": self.unacked[cid], "client_id": cid})
            await asyncio.sleep(SEND_EVERY_S)

    async def sync_all(self) -> None:
        """Ask for everything past what this client has (the final catch-up)."""
        self._sync_now.set()

    async def run(self) -> None:
        self._sync_now = asyncio.Event()
        while not self.stop.is_set():
            try:
                ws = await WS.open(self.url)
            except (InvalidStatus, OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
                continue
            self.connects += 1
            tasks: list[asyncio.Task[None]] = []
            try:
                self.rooms = {r["room_id"] for r in ws.hello["rooms"]}
                for cid, body in list(self.unacked.items()):  # the ack may have been lost with the socket
                    self.resent += 1
                    await ws.send({"type": "send", "room_id": self.home, "body": body, "client_id": cid})
                for room in sorted(self.rooms):
                    await self._sync(ws, room)
                self.connected.set()
                tasks = [asyncio.create_task(self._reader(ws)), asyncio.create_task(self._sender(ws))]
                stop = asyncio.create_task(self.stop.wait())
                while True:
                    sync_now = asyncio.create_task(self._sync_now.wait())
                    done, _ = await asyncio.wait([*tasks, stop, sync_now], return_when=asyncio.FIRST_COMPLETED)
                    if sync_now in done:
                        self._sync_now.clear()
                        for room in sorted(self.rooms):
                            await self._sync(ws, room)
                        continue
                    sync_now.cancel()
                    break
                stop.cancel()
                for t in tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            except (ConnectionClosed, OSError, asyncio.TimeoutError):
                pass
            finally:
                self.connected.clear()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await ws.close()
            if not self.stop.is_set():
                await asyncio.sleep(0.2)  # reconnect backoff


async def _until(pred: Any, timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None:
            assert proc.alive(), f"{proc.name} exited:\n{proc.log_tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(150)
async def test_compose_stack_kill_server_and_worker_loses_nothing() -> None:
    t0 = time.monotonic()
    times: dict[str, float] = {}
    tmp = make_tmp("chat-stack-")
    st = Stack(tmp)
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await st.start_postgres()
        st.start_redis()
        st.migrate()
        server_ports = [free_port() for _ in range(SERVERS)]
        servers = list(await asyncio.gather(*(st.server(i + 1, p) for i, p in enumerate(server_ports))))
        workers = list(await asyncio.gather(*(st.worker(i + 1) for i in range(WORKERS))))
        st.scheduler()
        st.nginx(server_ports)
        times["up_s"] = time.monotonic() - t0
        base = f"http://127.0.0.1:{st.http_port}"

        with httpx.Client(base_url=base, timeout=30) as api:
            users = [make_user(api) for _ in range(CLIENTS)]
            rooms = [make_room(api, users[0], member_ids=[u.id for j, u in enumerate(users) if j % ROOMS == r and j])
                     for r in range(ROOMS)]
        room_ids = [r["id"] for r in rooms]
        members = {rid: {j for j in range(CLIENTS) if j % ROOMS == r or j == 0} for r, rid in enumerate(room_ids)}
        ws_url = base.replace("http://", "ws://") + "/ws"
        clients = [Client(j, ws_url, u.access_token, room_ids[j % ROOMS]) for j, u in enumerate(users)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 20)
        t_load = time.monotonic()

        # kill -9 one server while it holds clients; restart it on the same address.
        await asyncio.sleep(5)
        doomed_port = server_ports[0]
        # Which clients the killed server held: those whose socket drops (nginx round-robins
        # the 20 over the 3 servers, so about a third).
        held = [c for c in clients if c.connects == 1]
        servers[0].kill9()
        t_kill = time.monotonic()
        await asyncio.sleep(1.0)
        servers[0] = await st.server(SERVERS + 1, doomed_port)
        times["server_restart_s"] = time.monotonic() - t_kill
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 20)
        reconnected = [c for c in held if c.connects > 1]
        assert len(reconnected) >= CLIENTS // SERVERS // 2, \
            f"only {len(reconnected)} clients lost their socket with the killed server (nginx did not spread them?)"
        times["reconnect_s"] = time.monotonic() - t_kill

        # kill -9 one worker while it is flushing (it has flushed at least one batch and
        # flush jobs keep coming: the backlog threshold is crossed every ~2 s per room).
        await _until(lambda: "flush room=" in workers[0].log_text(), 15, "worker-1 to flush", workers[0])
        before = workers[0].log_text().count("flush room=")
        # Right after one flush completes, the next is the one in progress under load.
        await asyncio.sleep(0.3)
        workers[0].kill9()
        flushes_before_kill = before
        await asyncio.sleep(1.0)
        workers[0] = await st.worker(WORKERS + 1)

        await asyncio.sleep(max(0.0, LOAD_S - (time.monotonic() - t_load)))
        for c in clients:
            c.sending = False
        times["load_s"] = time.monotonic() - t_load

        # Every send is acked in the end (resends with the same client_id after the kill).
        deadline = time.monotonic() + 20
        while any(c.unacked for c in clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not any(c.unacked for c in clients), \
            f"unacked sends: {sum(len(c.unacked) for c in clients)}; errors: {[e for c in clients for e in c.errors][:5]}"

        acked = {m["id"]: m for c in clients for m in c.acked.values()}
        by_room: dict[str, set[str]] = defaultdict(set)
        for m in acked.values():
            by_room[m["room_id"]].add(m["id"])

        # Every member has every acked message of its rooms (events, acks, sync).
        deadline = time.monotonic() + 20
        while True:
            missing = {c.n: sum(len(by_room[r] - set(c.seen[r].values())) for r in room_ids if c.n in members[r])
                       for c in clients}
            if not any(missing.values()) or time.monotonic() > deadline:
                break
            for c in clients:
                await c.sync_all()
            await asyncio.sleep(0.5)
        assert not any(missing.values()), f"acked messages a member never got: {missing}"
        for c in clients:
            assert not c.conflicts, c.conflicts[:5]
            for r in room_ids:
                ids = list(c.seen[r].values())
                assert len(ids) == len(set(ids)), f"client {c.n}: one message under two seqs in room {r}"
                if c.n not in members[r]:
                    assert not ids, f"client {c.n} got messages of a room it is not in"
                else:
                    assert set(ids) == by_room[r], f"client {c.n}: room {r} has messages nobody acked"
        times["delivered_s"] = time.monotonic() - t_load

        # The flush drains into PostgreSQL: each acked message once, nothing else. The
        # scheduler's tick is minute-granular; stand in for it with its job (flush_pending).
        from app.jobs import enqueue_sync
        from app.settings import Settings

        settings = Settings.load(env=st.app_env("scheduler"), env_file=None)
        db_url = st.app_env("worker")["DATABASE_URL"]
        deadline = time.monotonic() + 25
        rows: list[asyncpg.Record] = []
        while time.monotonic() < deadline:
            enqueue_sync(settings, "flush_pending")
            conn = await asyncpg.connect(db_url)
            try:
                rows = await conn.fetch("SELECT id::text AS id, room_id::text AS room_id, seq, client_id, "
                                        "sender_id::text AS sender_id FROM messages")
            finally:
                await conn.close()
            if set(acked) <= {r["id"] for r in rows}:
                break
            await asyncio.sleep(1.0)
        counts = Counter(r["id"] for r in rows)
        lost = [mid for mid in acked if mid not in counts]
        assert not lost, f"{len(lost)} of {len(acked)} acked messages never reached PostgreSQL"
        assert set(counts) == set(acked), f"rows nobody acked: {len(set(counts) - set(acked))}"
        assert all(n == 1 for n in counts.values()), "a message stored twice"
        keys = Counter((r["sender_id"], r["client_id"]) for r in rows)
        assert all(n == 1 for n in keys.values()), "a resent client_id made a second message"
        seqs = Counter((r["room_id"], r["seq"]) for r in rows)
        assert all(n == 1 for n in seqs.values()), "two messages with one seq"
        times["flushed_s"] = time.monotonic() - t_load

        # Every long-running service of the stack is still up (none crashed under the faults).
        for proc in [*servers, *workers, *(p for p in st.procs if p.name in ("scheduler", "nginx", "redis"))]:
            assert proc.alive(), f"{proc.name} died:\n{proc.log_tail()}"
        times["total_s"] = time.monotonic() - t0
        resent = sum(c.resent for c in clients)
        print(f"\n[stack] acked={len(acked)} rows={len(rows)} clients_on_killed_server={len(reconnected)} "
              f"resent_after_reconnect={resent} worker1_flushes_before_kill={flushes_before_kill} "
              + " ".join(f"{k}={v:.1f}" for k, v in times.items()), flush=True)
    finally:
        for c in clients:
            c.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        st.close()
        try:
            await st.drop_postgres()
        finally:
            if os.environ.get("CHAT_STACK_KEEP_LOGS"):
                print(f"[stack] logs kept in {tmp}")
            else:
                remove_tmp(tmp)
