"""Test fixtures against the real PostgreSQL and Redis (no fakes, no SQLite).

The session creates its own database (`chat_test_<random>`) on the server of
DATABASE_URL (default: the local one), applies the committed migrations, and
uses its own Redis key prefix (hence its own Dramatiq namespace, see
app.store.keys.Keys.dramatiq_namespace) and its own MEDIA_ROOT in a temporary directory;
all are removed at the end. A missing service fails the run loudly: these tests mean
nothing without the real thing.

Isolation inside the session: the `isolated` fixture gives a test (or, overriding
`settings`/`keys` in a module, a whole module) a Redis prefix of its own under the
session's, so jobs one test enqueues never reach another test's worker.

Engines: a module marked `pytest.mark.redis_engines` runs each test that uses Redis (through
settings, keys, redis, server, own_server, api, isolated, feed...) on single-node Redis and on a
real 3-master Redis Cluster, ids `test_x[single]` / `test_x[cluster]`; `redis_engines("cluster")`
picks engines. The fixture `redis_engine` (module scope) is the tests.env.Engine in use; the
cluster (tests/cluster.py) is started lazily the first time a test needs it, once per session,
unless TEST_REDIS_CLUSTER_URL names one. Tests on the cluster are `e2e` (it is a process).

Timeouts: pytest-timeout's signal method (pyproject) fails a hung test and lets its
fixtures tear down; a SIGALRM that lands in a background asyncio task can be swallowed,
so a backstop thread dumps the stacks and ends the run TIMEOUT_BACKSTOP_S later, after
stopping every process the tests started (they also die with us: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from app.store.keys import Keys
from app.settings import Settings
from tests import markers
from tests import cluster as cluster_nodes
from tests.env import (ADMIN_DB_URL, ENGINES, MEDIA_ROOT, REDIS_PREFIX, REDIS_URL, REPO_MEDIA, RUN_ID, TEST_DB_NAME,
                       TEST_DB_URL, Engine, Isolated, engine)
from tests.support import OwnServers, ServerProc, stop_all

# How long after pytest-timeout's signal the backstop ends the run (tests/test_support.py shortens it).
TIMEOUT_BACKSTOP_S = float(os.environ.get("CHAT_TEST_TIMEOUT_BACKSTOP_S", "30"))


def _repo_media_files() -> set[str]:
    if not REPO_MEDIA.is_dir():
        return set()
    return {str(p.relative_to(REPO_MEDIA)) for p in REPO_MEDIA.rglob("*") if p.is_file()}


_media_before: set[str] = set()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_engines(*names): run the module's Redis tests on each engine "
                            "(default: single and cluster, a real 3-master Redis Cluster); see redis_engine")
    os.environ.setdefault("CHAT_TEST_RUN", RUN_ID)
    # Anything that loads Settings from the environment (a `python -m bench` run, a stray
    # Settings.load()) gets the session's prefix, namespace and media root too.
    os.environ["REDIS_PREFIX"] = REDIS_PREFIX
    os.environ["MEDIA_ROOT"] = MEDIA_ROOT
    _media_before.update(_repo_media_files())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test wrote into the repository's media/ or left a process running."""
    problems = []
    leaked = stop_all()
    if leaked:
        problems.append(f"processes still running at the end of the session (stopped now): {leaked}")
    created = sorted(_repo_media_files() - _media_before)
    if created:
        problems.append(f"the run created {len(created)} file(s) under {REPO_MEDIA} (MEDIA_ROOT must be "
                        f"the session's temporary directory): {created[:10]}")
    shutil.rmtree(MEDIA_ROOT, ignore_errors=True)
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for p in problems:
            if reporter is not None:
                reporter.write_line(f"SESSION CHECK FAILED: {p}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- the e2e marker -------------------------------------------------------------------------

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that starts a process, or uses one, is `e2e` (the rule: tests/markers.py).

    So `-m 'not e2e'` is the fast inner loop: in-process tests only, no server boot.
    """
    fixtures = markers.process_fixtures()
    sources: dict[Path, str] = {}
    for item in items:
        if item.get_closest_marker("e2e"):
            continue
        callspec = getattr(item, "callspec", None)
        if markers.engine_reason(callspec.params if callspec else {}, getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
            continue
        path = Path(str(item.fspath))
        if path not in sources:
            sources[path] = path.read_text(errors="replace") if path.is_file() else ""
        if markers.e2e_reason(path, getattr(item, "fixturenames", ()), sources[path], fixtures):
            item.add_marker(pytest.mark.e2e)


# -- Redis engines ---------------------------------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`redis_engines` modules: every test that uses Redis runs once per engine (module-scoped,
    so a module's own servers start once per engine and pytest groups the tests by engine)."""
    mark = metafunc.definition.get_closest_marker("redis_engines")
    if mark is None or "redis_engine" not in metafunc.fixturenames:
        return
    names = list(mark.args) or list(ENGINES)
    unknown = set(names) - set(ENGINES)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: redis_engines{tuple(unknown)}: not one of {ENGINES}")
    metafunc.parametrize("redis_engine", names, indirect=True, scope="module", ids=names)


class _Engines:
    """The session's engines: the cluster is started on first use (or is TEST_REDIS_CLUSTER_URL's)."""

    def __init__(self) -> None:
        self.nodes: cluster_nodes.RedisClusterNodes | None = None
        self.cluster_url = os.environ.get("TEST_REDIS_CLUSTER_URL", "")

    def get(self, name: str) -> Engine:
        if name == "cluster" and not self.cluster_url:
            self.nodes = cluster_nodes.RedisClusterNodes(RUN_ID).start()
            self.cluster_url = self.nodes.url
            # Tests that read the variable (tests/app/store/test_keys_cluster.py) find this one.
            os.environ["TEST_REDIS_CLUSTER_URL"] = self.cluster_url
        return engine(name, self.cluster_url if name == "cluster" else None)

    def close(self) -> None:
        if self.cluster_url:
            _clear_cluster_prefix(self.cluster_url)
        if self.nodes is not None:
            self.nodes.stop()
            self.nodes = None


@pytest.fixture(scope="session")
def redis_engines() -> Iterator[_Engines]:
    engines = _Engines()
    try:
        yield engines
    finally:
        engines.close()


@pytest.fixture(scope="module")
def redis_engine(request: pytest.FixtureRequest, redis_engines: _Engines) -> Engine:
    """The Redis engine of this test: `single` unless its module is marked `redis_engines`."""
    return redis_engines.get(getattr(request, "param", "single"))


@pytest.fixture(scope="session")
def redis_cluster_url(redis_engines: _Engines) -> str:
    """One node of the session's Redis Cluster (TEST_REDIS_CLUSTER_URL's, or started now)."""
    return redis_engines.get("cluster").redis_url


# -- timeouts ------------------------------------------------------------------------------

def _backstop(item: pytest.Item, settings: Any) -> None:
    """The signal did not end the test (swallowed in a background task): stop children, dump, exit."""
    import pytest_timeout

    stop_all(2.0)
    pytest_timeout.timeout_timer(item, settings)  # dumps every thread's stack, then os._exit(1)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method plus a thread backstop TIMEOUT_BACKSTOP_S later."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own implementation
    import pytest_timeout

    def handler(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        pytest_timeout.timeout_sigalrm(item, settings)

    backstop = threading.Timer(settings.timeout + TIMEOUT_BACKSTOP_S, _backstop, (item, settings))
    backstop.daemon = True
    backstop.name = f"timeout backstop {item.nodeid}"

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        backstop.cancel()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # read by pytest-timeout's cancel hook
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    backstop.start()
    return True


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
    # The session's keys, its Dramatiq namespace and every sub-prefix (`isolated`) start with
    # REDIS_PREFIX; RUN_ID has a fixed length, so no other session's prefix matches.
    for pattern in (f"{REDIS_PREFIX}*",):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i:i + 500])
    client.close()


def _clear_cluster_prefix(url: str) -> None:
    """The session's keys on every primary of the cluster (an external one outlives the session)."""
    try:
        cluster_nodes.clear_prefix(url, REDIS_PREFIX)
    except redis_sync.RedisError as exc:
        print(f"could not clear {REDIS_PREFIX}* on the Redis Cluster at {url}: {exc}")


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


@pytest.fixture(scope="module")
def settings(redis_engine: Engine) -> Settings:
    """The in-process settings of the test's engine (TEST_ENV on single-node Redis)."""
    return redis_engine.settings


@pytest.fixture(scope="module")
def keys(redis_engine: Engine) -> Keys:
    return redis_engine.keys


@pytest.fixture
def isolated(redis_engine: Engine) -> Isolated:
    """This test's own Redis prefix and Dramatiq namespace (workers started with `.env` use it)."""
    return redis_engine.isolated()


@pytest.fixture(scope="session")
def session_servers() -> Iterator[dict[str, ServerProc]]:
    """The session's server per engine (started by `server`), stopped before the engines' teardown."""
    servers: dict[str, ServerProc] = {}
    try:
        yield servers
    finally:
        for proc in servers.values():
            proc.stop()


@pytest.fixture(scope="module")
def server(redis_engine: Engine, session_servers: dict[str, ServerProc]) -> ServerProc:
    """One real server process per engine for the session, on a free loopback port."""
    if redis_engine.name not in session_servers:
        name = f"server-{RUN_ID}" if redis_engine.name == "single" else f"server-{redis_engine.name}-{RUN_ID}"
        proc = ServerProc(redis_engine.env, name=name)
        session_servers[redis_engine.name] = proc  # stopped at the session's end even if not ready
        proc.wait_ready()
    return session_servers[redis_engine.name]


@pytest.fixture(scope="module")
def own_server(request: pytest.FixtureRequest, redis_engine: Engine) -> Iterator[OwnServers]:
    """Servers of a test's (or a module fixture's) own: `own_server(env=..., workers=..., **ENV)`.

    Returns a ready ServerProc on the engine's env (TEST_ENV on single-node Redis) overlaid with
    `env` and the keyword variables; every one is stopped when the module ends (`with
    own_server(...) as proc:` stops it at the end of the block). Module scope, so module-scoped
    fixtures can use it too.
    """
    module = request.module.__name__.rsplit('.', 1)[-1]
    tag = f"{module}-{RUN_ID}" if redis_engine.name == "single" else f"{module}-{redis_engine.name}-{RUN_ID}"
    servers = OwnServers(redis_engine.env, tag=tag)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def api(server: ServerProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    # The server's own client (a blocking pool with its timeouts): redis-py's default pool
    # fails with "Too many connections" when a flush of many pending rooms runs in a test.
    from app.store.client import connect_redis_for

    client = connect_redis_for(settings)  # a RedisCluster on the cluster engine
    if settings.redis_cluster:
        # A cold cluster client fails concurrent first calls (app/store/client.py): learn the map now.
        await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
async def redis_node(settings: Settings) -> AsyncIterator[Redis]:
    """A plain client of REDIS_URL: the Redis itself, or on a cluster the one node it names
    (where the fan-out's subscription connects; CLIENT LIST/KILL there see it)."""
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def feed(settings: Settings, keys: Keys) -> AsyncIterator[Any]:
    """A subscription to the events channel: what every server process's fan-out receives.

    One plain connection to REDIS_URL, as the fan-out holds: on a cluster that is one node,
    which gets every (unsharded) PUBLISH of every node.
    """
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.events_channel())
    await pubsub.get_message(timeout=5)
    yield pubsub
    await pubsub.aclose()
    await client.aclose()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[None]:
    """Tortoise initialised on the session database, in the test's event loop."""
    from app.db import close_db, init_db

    await init_db(settings.database_url, 5)
    yield
    await close_db()


@pytest.fixture
async def pool(db: None) -> Any:
    """The asyncpg pool behind Tortoise, as the worker's flush gets it (tasks/broker.Resources.pool)."""
    from app.db import ping_db, raw_pool

    await ping_db()
    return raw_pool()


@pytest.fixture
async def resources(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[Any]:
    """The process Resources (app/resources.py) on the test's Redis client, closed after."""
    from app.resources import Resources

    res = Resources.build(settings, redis, keys)
    yield res
    await res.close()
