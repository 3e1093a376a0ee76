"""The test session's environment: its database, Redis prefix, media root, and the env of every process.

A support module, not a conftest: test modules and conftests import these names from here
(test modules never import a conftest or each other). Computed once per pytest process at
import (RUN_ID is random), so every importer sees the same session; tests/conftest.py
creates the database and removes the prefix, the database and MEDIA_ROOT at the end.

`isolated_env` gives a test (or a module) a Redis prefix of its own under the session's,
hence its own Dramatiq namespace (app.store.keys.Keys.dramatiq_namespace), so jobs one test
enqueues never reach another test's worker.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
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


def isolated_env(tag: str = "") -> Isolated:
    """A fresh sub-prefix `<REDIS_PREFIX>.<tag><random>`; cleared with the session's keys."""
    prefix = f"{REDIS_PREFIX}.{tag}{uuid.uuid4().hex[:8]}"
    env = {**TEST_ENV, "REDIS_PREFIX": prefix}
    settings = Settings.load(env=env, env_file=None)
    return Isolated(prefix, env, settings, Keys(prefix))
