"""The process's Prometheus counters and gauges (prometheus-client), and nothing else.

A module of its own, importing nothing of the project, so that the lowest layers can count
(app.errors counts backend errors, the flush its rows) without an import circle; app/metrics.py
renders them with what a scrape reads. In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before
this is imported) every process writes its values to files there.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MESSAGES_ACCEPTED = Counter("chat_messages_accepted", "Messages accepted (result=new, or duplicate: "
                            "a retried client_id answered with the original)", ["result"])
MESSAGES_REJECTED = Counter("chat_messages_rejected", "Messages refused, by the API error code", ["reason"])
BACKEND_ERRORS = Counter("chat_backend_errors", "Requests answered 503 because Redis or PostgreSQL failed",
                         ["service"])
FLUSHED_ROWS = Counter("chat_flushed_rows", "Messages the flush moved from Redis to PostgreSQL")
# livesum: the sum over the processes still alive (a stopped one is marked dead on its way out).
WS_CONNECTIONS = Gauge("chat_ws_connections", "Open WebSocket connections", multiprocess_mode="livesum")


def count_backend_error(service: str | None) -> None:
    BACKEND_ERRORS.labels(service or "unknown").inc()
