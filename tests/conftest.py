"""Test fixtures against the real PostgreSQL and Redis (no fakes, no SQLite).

The session creates its own database (`chat_test_<random>`) on the server of
DATABASE_URL (default: the local one), applies the committed migrations, and
uses its own Redis key prefix; both are removed at the end. A missing service
fails the run loudly: these tests mean nothing without the real thing.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from app.keys import Keys
from app.settings import Settings
from tests.support import ServerProc

RUN_ID = uuid.uuid4().hex[:10]


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url.replace("postgresql://", "postgres://", 1))
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, ""))


BASE_DB_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
ADMIN_DB_URL = _with_db(BASE_DB_URL, "postgres")
TEST_DB_NAME = f"chat_test_{RUN_ID}"
TEST_DB_URL = _with_db(BASE_DB_URL, TEST_DB_NAME)
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = f"chat_test_{RUN_ID}"

# Environment of every process the tests start, and of the in-process Settings.
# Rate limits are relaxed here; the rate-limit tests set their own.
TEST_ENV = {
    "CHAT_ENV": "test",
    "DATABASE_URL": TEST_DB_URL,
    "REDIS_URL": REDIS_URL,
    "REDIS_PREFIX": REDIS_PREFIX,
    "RATE_MESSAGES": "100000",
    "RATE_AUTH": "100000",
    "RATE_UPLOADS": "100000",
    "RATE_ROOMS": "100000",
    "RATE_JOINS": "100000",
    # Cheap password hashing: hundreds of test logins would otherwise dominate the run.
    "ARGON2_TIME_COST": "1",
    "ARGON2_MEMORY_KIB": "1024",
    "WS_HEARTBEAT_S": "5",
    "LOG_LEVEL": "INFO",
}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("CHAT_TEST_RUN", RUN_ID)


async def _create_database() -> None:
    try:
        conn = await asyncpg.connect(ADMIN_DB_URL, timeout=5)
    except Exception as exc:  # noqa: BLE001
        pytest.exit(f"PostgreSQL is not reachable at {ADMIN_DB_URL}: {exc}. Start it (see STACK.md).", 2)
    try:
        await conn.execute(f'CREATE DATABASE "{TEST_DB_NAME}"')
    finally:
        await conn.close()
    from app.db import migrate

    await migrate(TEST_DB_URL)


async def _drop_database() -> None:
    conn = await asyncpg.connect(ADMIN_DB_URL, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB_NAME}" WITH (FORCE)')
    finally:
        await conn.close()


def _clear_redis_prefix() -> None:
    client = redis_sync.Redis.from_url(REDIS_URL)
    for pattern in (f"{REDIS_PREFIX}:*", f"{REDIS_PREFIX}-*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i:i + 500])
    client.close()


@pytest.fixture(scope="session", autouse=True)
def test_services() -> Iterator[None]:
    """Create the session's database and check Redis; tear both down at the end."""
    try:
        redis_sync.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.exit(f"Redis is not reachable at {REDIS_URL}: {exc}. Start it (see STACK.md).", 2)
    asyncio.run(_create_database())
    yield
    asyncio.run(_drop_database())
    _clear_redis_prefix()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.load(env=TEST_ENV, env_file=None)


@pytest.fixture(scope="session")
def keys(settings: Settings) -> Keys:
    return Keys(settings.redis_prefix)


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProc]:
    """One real server process for the session, on a free loopback port."""
    proc = ServerProc(TEST_ENV, name=f"server-{RUN_ID}")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def api(server: ServerProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[None]:
    """Tortoise initialised on the session database, in the test's event loop."""
    from app.db import close_db, init_db

    await init_db(settings.database_url, 5)
    yield
    await close_db()
