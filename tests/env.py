"""The test session's environment: its database, Redis prefix, media root, and the env of every process.

A support module, not a conftest: test modules and conftests import these names from here
(test modules never import a conftest or each other). Computed once per pytest process at
import (RUN_ID is random), so every importer sees the same session; tests/conftest.py
creates the database and removes the prefix, the database and MEDIA_ROOT at the end.

`isolated_env` gives a test (or a module) a Redis prefix of its own under the session's,
hence its own Dramatiq namespace (app.store.keys.Keys.dramatiq_namespace), so jobs one test
enqueues never reach another test's worker.

Engines: the real-time, worker and history tests run on single-node Redis and on a 3-master
Redis Cluster (`pytestmark = pytest.mark.redis_engines`, tests/conftest.py). An `Engine` is
what differs between the two: the env of the processes a test starts (REDIS_URL one node,
REDIS_CLUSTER, BROKER_URL the plain Redis: Dramatiq's broker is not cluster-safe) and the
in-process settings and keys. The cluster engine has a prefix of its own under the session's
(`<REDIS_PREFIX>.cluster`), so its Dramatiq namespace on the shared broker Redis is its own.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from app.settings import Settings
from app.store.keys import Keys
from tests.support import ROOT

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
# Uploads of every process of the session land here, never in the repository's ./media.
MEDIA_ROOT = tempfile.mkdtemp(prefix=f"chat-test-media-{RUN_ID}-")
REPO_MEDIA = ROOT / "media"

# Environment of every process the tests start, and of the in-process Settings.
# Rate limits are relaxed here; the rate-limit tests set their own.
TEST_ENV = {
    "CHAT_ENV": "test",
    "DATABASE_URL": TEST_DB_URL,
    "REDIS_URL": REDIS_URL,
    "REDIS_PREFIX": REDIS_PREFIX,
    "MEDIA_ROOT": MEDIA_ROOT,
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


@dataclasses.dataclass
class Isolated:
    """A Redis prefix (so key space and Dramatiq namespace) of one test or module, under the session's."""

    prefix: str
    env: dict[str, str]  # TEST_ENV with that prefix: give it to every process of the test
    settings: Settings
    keys: Keys


def isolated_env(tag: str = "", base: Mapping[str, str] | None = None) -> Isolated:
    """A fresh sub-prefix `<prefix of base>.<tag><random>` on `base`'s engine (default TEST_ENV);
    cleared with the session's keys."""
    base = TEST_ENV if base is None else base
    prefix = f"{base['REDIS_PREFIX']}.{tag}{uuid.uuid4().hex[:8]}"
    env = {**base, "REDIS_PREFIX": prefix}
    settings = Settings.load(env=env, env_file=None)
    return Isolated(prefix, env, settings, Keys.from_settings(settings))


ENGINES = ("single", "cluster")
CLUSTER_PREFIX = f"{REDIS_PREFIX}.cluster"


@dataclasses.dataclass
class Engine:
    """One Redis engine of the session: `single` (REDIS_URL) or `cluster` (a 3-master cluster)."""

    name: str
    env: dict[str, str]  # TEST_ENV for this engine: give it to every process a test starts
    settings: Settings
    keys: Keys

    @property
    def cluster(self) -> bool:
        return self.name == "cluster"

    @property
    def redis_url(self) -> str:
        """The plain Redis, or one node of the cluster (a plain connection there gets every PUBLISH)."""
        return self.env["REDIS_URL"]

    def isolated(self, tag: str = "") -> Isolated:
        return isolated_env(tag, self.env)


_engines: dict[str, Engine] = {}


def engine(name: str, cluster_url: str | None = None) -> Engine:
    """The session's engine `name`; the cluster one needs the URL of a node the first time."""
    if name in _engines:
        return _engines[name]
    if name == "single":
        env = dict(TEST_ENV)
    elif name == "cluster":
        if cluster_url is None:
            raise RuntimeError("the cluster engine is not started (tests/conftest.py's redis_engine starts it)")
        # The cluster engine also runs the per-room fan-out channels (spec G): [single] covers
        # FANOUT_CHANNELS=global, [cluster] covers rooms, without a third run of the suite.
        env = {**TEST_ENV, "REDIS_URL": cluster_url, "REDIS_CLUSTER": "true", "BROKER_URL": REDIS_URL,
               "REDIS_PREFIX": CLUSTER_PREFIX, "FANOUT_CHANNELS": "rooms"}
    else:
        raise ValueError(f"unknown Redis engine {name!r} (one of {ENGINES})")
    settings = Settings.load(env=env, env_file=None)
    _engines[name] = Engine(name, env, settings, Keys.from_settings(settings))
    return _engines[name]


def engine_of(keys: Keys) -> Engine:
    """The engine whose key layout `keys` has (helpers given only keys build settings from it)."""
    return engine("cluster" if keys.cluster else "single")
