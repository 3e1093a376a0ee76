"""The start-up persistence check against a real redis-server of our own: what an operator
reads in the log for each AOF fsync policy (docs/reliability.md, "Redis process crash"),
the refusal in production without an AOF, and a Redis that refuses CONFIG (managed Redis)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest
import redis as redis_sync

from app.settings import Settings
from app.store.client import check_persistence, connect_redis
from tests.faults._procs import RedisServer

DEV = Settings(chat_env="test")
PROD = Settings(chat_env="production", jwt_secret="p" * 40)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # Our own server: the test switches its AOF settings, which the session's Redis must keep.
    base: Path = tmp_path_factory.mktemp("persistence-redis")
    server = RedisServer(base / "data", base, appendfsync="always").start()
    try:
        yield server
    finally:
        server.stop()


def _config(server: RedisServer, **values: str) -> None:
    client = redis_sync.Redis.from_url(server.url, socket_timeout=5)
    try:
        for name, value in values.items():
            client.config_set(name, value)
    finally:
        client.close()


async def _warnings(url: str, settings: Settings, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    client = connect_redis(url)
    try:
        with caplog.at_level(logging.INFO, logger="chat.redis"):
            await check_persistence(client, settings)
    finally:
        await client.aclose()
    return [r.getMessage() for r in caplog.records if r.name == "chat.redis" and r.levelno >= logging.WARNING]


async def test_always_starts_silently_everysec_and_no_each_warn_what_a_crash_loses(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    _config(own_redis, appendonly="yes", appendfsync="always")
    assert await _warnings(own_redis.url, PROD, caplog) == []

    _config(own_redis, appendfsync="everysec")
    [line] = await _warnings(own_redis.url, PROD, caplog)  # a warning, not a refusal, even in production
    assert "everysec" in line and "Redis process" in line and "~2 s" in line and "appendfsync always" in line

    _config(own_redis, appendfsync="no")
    [line] = await _warnings(own_redis.url, DEV, caplog)
    assert "appendfsync no" in line and "host crash" in line and "~30 s" in line
    _config(own_redis, appendfsync="always")


async def test_without_aof_production_refuses_and_development_warns(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    _config(own_redis, appendonly="no")
    try:
        [line] = await _warnings(own_redis.url, DEV, caplog)
        assert "without AOF" in line and "appendfsync always" in line
        with pytest.raises(RuntimeError, match="Refusing to start"):
            await _warnings(own_redis.url, PROD, caplog)
        assert await _warnings(own_redis.url, PROD.replace(allow_redis_without_persistence=True), caplog) == [line]
    finally:
        _config(own_redis, appendonly="yes")


async def test_a_redis_refusing_config_still_gets_the_aof_check_and_starts(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    # Managed Redis services commonly deny CONFIG: the AOF check (INFO) still runs, the policy
    # check is skipped with an INFO line, and the server starts.
    _config(own_redis, appendonly="yes", appendfsync="everysec")
    admin = redis_sync.Redis.from_url(own_redis.url, socket_timeout=5)
    try:
        admin.acl_setuser("noconfig", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-config"])
        url = own_redis.url.replace("redis://", "redis://noconfig:pw@")
        assert await _warnings(url, PROD, caplog) == []
        assert any("could not read Redis's appendfsync" in r.getMessage() for r in caplog.records)
    finally:
        admin.acl_deluser("noconfig")
        admin.config_set("appendfsync", "always")
        admin.close()


async def test_on_a_cluster_every_primarys_policy_is_read(redis_cluster_url: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # The session's own cluster: one primary on everysec among always ones is one warning.
    from redis.cluster import RedisCluster

    sync = RedisCluster.from_url(redis_cluster_url)
    primaries = sync.get_primaries()
    before = {n.name: sync.config_get("*", target_nodes=n) for n in primaries}
    try:
        for i, node in enumerate(primaries):
            sync.config_set("appendonly", "yes", target_nodes=node)
            sync.config_set("appendfsync", "everysec" if i == 1 else "always", target_nodes=node)
        client = connect_redis(redis_cluster_url, cluster=True)
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="chat.redis"):
                await check_persistence(client, PROD)
        finally:
            await client.aclose()
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "appendfsync everysec" in lines[0]
    finally:
        for node in primaries:
            old = before[node.name]
            sync.config_set("appendfsync", old.get(b"appendfsync", b"everysec"), target_nodes=node)
            sync.config_set("appendonly", old.get(b"appendonly", b"no"), target_nodes=node)
        sync.close()
