"""Redis Cluster failures a client sees as 503 (app/errors.py), like a single Redis going away."""

from __future__ import annotations

from redis import exceptions as rx

from app.errors import backing_service_error


def test_cluster_outages_are_503_and_a_cross_slot_bug_is_not() -> None:
    for exc in (rx.SlotNotCoveredError('Slot "5" not covered by the cluster.'), rx.ClusterError("TTL exhausted."),
                rx.ClusterDownError("CLUSTERDOWN The cluster is down"), rx.MaxConnectionsError("Too many connections"),
                rx.RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node")):
        err = backing_service_error(exc)
        assert err is not None and err.status == 503 and err.details == {"service": "redis"}, exc
    assert backing_service_error(rx.CrossSlotTransactionError("All keys involved in a cluster transaction")) is None
