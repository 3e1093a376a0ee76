"""Fixtures of the store tests that need a real Redis Cluster."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def cluster_url(request: pytest.FixtureRequest) -> str:
    """TEST_REDIS_CLUSTER_URL, else the session's own cluster (tests/conftest.py's
    redis_cluster_url starts it on first use) when redis-server and redis-cli are installed;
    else the test is skipped."""
    url = os.environ.get("TEST_REDIS_CLUSTER_URL", "")
    if url:
        return url
    from tests import cluster

    if cluster.tools_missing():
        pytest.skip(f"TEST_REDIS_CLUSTER_URL is not set and {', '.join(cluster.tools_missing())} is missing")
    return request.getfixturevalue("redis_cluster_url")
