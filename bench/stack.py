"""The system under test for one scenario: a private Redis, a fresh database, a chat server.

`Stack` starts each piece itself (by PID), and `close()` stops and removes every one
of them, also after an error or Ctrl-C. `populate` creates users and rooms quickly
and honestly: users are inserted with the ORM (one real argon2 hash shared by all,
a token family row each, exactly what a login stores) and get access tokens signed
with the server's own settings; rooms are made through `POST /rooms` with
`member_ids`, so the server builds its own Redis member sets.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from app.settings import Settings
from bench.procs import ROOT, ChatServerProc, LauncherProc, RedisProc

PASSWORD = "bench-password-123"


def db_url_for(base: str, name: str) -> str:
    parts = urlsplit(base.replace("postgresql://", "postgres://", 1))
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def base_db_url() -> str:
    """The machine's PostgreSQL (BENCH_DATABASE_URL, else DATABASE_URL, else the local default)."""
    return (os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
            or "postgres://postgres@127.0.0.1:5432/postgres")


def _settings_has(name: str) -> bool:
    return name in Settings.model_fields


@dataclass
class Population:
    user_ids: list[str]
    tokens: list[str]
    room_ids: list[str] = field(default_factory=list)
    room_members: list[list[int]] = field(default_factory=list)  # user indices per room


class Stack:
    """Redis + database + server for one scenario (server optional: the flush scenario needs none)."""

    def __init__(self, run_id: str, name: str, *, write_mode: str = "cache", with_server: bool = True,
                 extra_env: dict[str, str] | None = None, launcher: bool = False) -> None:
        self.run_id, self.name = run_id, name
        # launcher: `make run`'s whole tree (server, worker, scheduler) instead of the server alone
        self.launcher = launcher
        self.tag = f"{run_id}_{name}"
        self.workdir = ROOT / "var" / "bench" / self.tag
        self.db_name = f"chat_bench_{self.tag}"
        self.db_url = db_url_for(base_db_url(), self.db_name)
        self.admin_url = db_url_for(base_db_url(), "postgres")
        self.write_mode = write_mode
        self.with_server = with_server
        self.extra_env = extra_env or {}
        self.redis: RedisProc | None = None
        self.server: ChatServerProc | LauncherProc | None = None
        self.db_created = False
        self.env: dict[str, str] = {}
        self.settings: Settings | None = None

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> "Stack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisProc(self.workdir / "redis", self.tag).wait_ready()
        await self._create_db()
        self.env = {
            "CHAT_ENV": "test", "DATABASE_URL": self.db_url, "REDIS_URL": self.redis.url,
            "REDIS_PREFIX": f"bench_{self.tag}", "CHAT_WRITE_MODE": self.write_mode,
            "RATE_MESSAGES": "10000000", "RATE_AUTH": "10000000", "WORKERS": "1",
            "JWT_SECRET": secrets.token_hex(32), "ACCESS_TOKEN_TTL_S": str(24 * 3600),
            "LOG_LEVEL": "WARNING",
        }
        if _settings_has("embedded_servers"):  # never start embedded servers behind our back
            self.env["EMBEDDED_SERVERS"] = "never"
        # Cheap hashing for the one hash the bench makes (the measured paths never hash).
        if _settings_has("argon2_time_cost"):
            self.env["ARGON2_TIME_COST"] = "1"
        if _settings_has("argon2_memory_kib"):
            self.env["ARGON2_MEMORY_KIB"] = "1024"
        self.env.update(self.extra_env)
        self.settings = Settings.load(env={**os.environ, **self.env})
        self._migrate()
        if self.with_server and self.launcher:
            # Its metrics directory and any servers.env stay inside this scenario's work directory.
            self.server = LauncherProc({**self.env, "VAR_DIR": str(self.workdir / "var")}, self.tag)
            await asyncio.get_running_loop().run_in_executor(None, self.server.wait_ready)
        elif self.with_server:
            self.server = ChatServerProc(self.env, self.tag)
            await asyncio.get_running_loop().run_in_executor(None, self.server.wait_ready)
        return self

    def close(self) -> None:
        """Stop what we started (by PID), drop the database, remove the work directory."""
        for proc in (self.server, self.redis):
            if proc is not None:
                try:
                    proc.stop()
                except Exception as exc:  # noqa: BLE001 - keep cleaning up the rest
                    print(f"  ! could not stop {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)
        if self.db_created:
            try:
                _run_in_thread(self._drop_db())
            except Exception as exc:  # noqa: BLE001
                print(f"  ! could not drop database {self.db_name}: {exc}", file=sys.stderr)
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def _create_db(self) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.db_name}"')
            self.db_created = True
        finally:
            await conn.close()

    async def _drop_db(self) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        finally:
            await conn.close()

    def _migrate(self) -> None:
        out = subprocess.run([sys.executable, "-m", "app.ops.cli", "migrate"], cwd=ROOT,
                             env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    # -- population -------------------------------------------------------------
    async def populate(self, n_users: int, room_groups: list[list[int]]) -> Population:
        """n_users users with access tokens; one room per group (first index = owner)."""
        pop = await self._insert_users(n_users)
        if room_groups:
            await self._create_rooms(pop, room_groups)
        return pop

    async def _insert_users(self, n: int) -> Population:
        from app import tokens
        from app.auth import password_context
        from app.db import close_db, init_db
        from models.token import TokenFamily
        from models.user import User

        assert self.settings is not None
        hashed = password_context(self.settings).hash(PASSWORD)
        short = self.run_id[:6]
        users = [User(id=uuid.uuid4(), username=f"b{short}_{i}", username_lower=f"b{short}_{i}",
                      display_name=f"bench user {i}", password_hash=hashed) for i in range(n)]
        await init_db(self.db_url, 4)
        try:
            await User.bulk_create(users, batch_size=2000)
            for u in users:
                u._saved_in_db = True  # noqa: SLF001 - bulk_create does not mark them, FKs need it
            families = [TokenFamily(id=uuid.uuid4(), user=u) for u in users]
            await TokenFamily.bulk_create(families, batch_size=2000)
        finally:
            await close_db()
        # With the `usr` claim a login now puts in (issue 12): without it every read marker
        # would look the username up in PostgreSQL, which is what an old token costs, not a login.
        toks = [tokens.issue(self.settings, user_id=str(u.id), family_id=str(f.id), kind=tokens.ACCESS,
                             username=u.username)[0]
                for u, f in zip(users, families)]
        return Population([str(u.id) for u in users], toks)

    async def _create_rooms(self, pop: Population, groups: list[list[int]], concurrency: int = 8) -> None:
        assert self.server is not None
        sem = asyncio.Semaphore(concurrency)
        room_ids: list[str] = [""] * len(groups)

        async def one(client: httpx.AsyncClient, i: int, group: list[int]) -> None:
            owner, rest = group[0], group[1:]
            body = {"name": f"bench room {i}", "member_ids": [pop.user_ids[u] for u in rest]}
            async with sem:
                resp = await client.post("/rooms", json=body,
                                         headers={"Authorization": f"Bearer {pop.tokens[owner]}"})
            if resp.status_code != 201:
                raise RuntimeError(f"POST /rooms answered {resp.status_code}: {resp.text[:300]}")
            room_ids[i] = resp.json()["id"]

        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=30.0) as client:
            await asyncio.gather(*(one(client, i, g) for i, g in enumerate(groups)))
        pop.room_ids, pop.room_members = room_ids, groups


def _run_in_thread(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop (cleanup paths)."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["e"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if "e" in box:
        raise box["e"]
    return box.get("v")
