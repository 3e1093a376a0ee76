"""The process's Prometheus counters and gauges (prometheus-client), and nothing else.

A module of its own, importing nothing of the project, so that the lowest layers can count
(app.errors counts backend errors, the flush its rows) without an import circle; app/metrics.py
renders them with what a scrape reads. In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before
this is imported) every process writes its values to files there.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_ACCEPTED = Counter("chat_messages_accepted", "Messages accepted (result=new, or duplicate: "
                            "a retried client_id answered with the original)", ["result"])
MESSAGES_REJECTED = Counter("chat_messages_rejected", "Messages refused, by the API error code", ["reason"])
BACKEND_ERRORS = Counter("chat_backend_errors", "Requests answered 503 because Redis or PostgreSQL failed",
                         ["service"])
FLUSHED_ROWS = Counter("chat_flushed_rows", "Messages the flush moved from Redis to PostgreSQL")
# livesum: the sum over the processes still alive (a stopped one is marked dead on its way out).
WS_CONNECTIONS = Gauge("chat_ws_connections", "Open WebSocket connections", multiprocess_mode="livesum")

# Sampled (app.metrics.LagSampler): accept time (the message's created_at) to dispatch here.
FANOUT_LAG = Histogram("chat_fanout_lag_seconds", "From a message's accept to its dispatch by a server "
                       "process to its WebSockets (sampled about once a second per process)",
                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


def count_backend_error(service: str | None) -> None:
    BACKEND_ERRORS.labels(service or "unknown").inc()
