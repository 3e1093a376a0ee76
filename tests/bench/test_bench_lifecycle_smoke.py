"""Smoke runs of the lifecycle scenarios of the load tool (bench/lifecycle.py): tiny, bounded, no timing assertions.

Like tests/bench/test_bench_smoke.py, each run starts its own Redis, database and server, so
these check the tool end to end: a result, the bookkeeping adds up, nothing left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.env import ADMIN_DB_URL
from tests.support import ROOT

RUN_TIMEOUT_S = 240
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 30)]


def run_bench(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench", *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "summary.md").exists()
    return json.loads((out / f"{args[0]}.json").read_text())


async def leftover_databases(run_id: str) -> list[str]:
    conn = await asyncpg.connect(ADMIN_DB_URL)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", f"chat_bench_{run_id}%")
    finally:
        await conn.close()
    return [r["datname"] for r in rows]


async def test_reads_smoke_run_marks_every_delivery_read(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "reads", "--connections", "20", "--rooms", "2", "--reads-rates", "40",
                     "--warmup", "0.5", "--duration", "2", "--drain", "5")
    pair = data["result"]["pairs"][0]
    plain, marked = pair["plain"], pair["reads"]
    for step in (plain, marked):
        assert step["sent"] > 0 and step["acked"] == step["sent"] and step["lost"] == 0 and step["duplicates"] == 0
    assert plain["reads_sent_total"] == 0 and plain["read_events_total"] == 0
    # one read frame per delivered message, and each one moved its reader's marker: one event back
    assert marked["reads_sent_total"] == marked["expected_deliveries"] > 0
    assert marked["read_events_total"] == marked["reads_sent_total"]
    assert marked["errors"] == {}
    assert "## reads" in (tmp_path / "summary.md").read_text()
    assert await leftover_databases(data["meta"]["run_id"]) == []


async def test_lifecycle_micro_smoke_run_counts_round_trips_and_queries(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "lifecycle_micro", "--micro-calls", "50")
    res = data["result"]
    for kind in ("send", "react", "mark_read"):
        assert res[kind]["calls"] == 50 and res[kind]["redis_round_trips_per_call"] >= 1
    # the bar: neither a reaction on a cached message nor a marker touches PostgreSQL
    assert res["react"]["postgres_queries"] == 0 and res["mark_read"]["postgres_queries"] == 0
    assert "## lifecycle_micro" in (tmp_path / "summary.md").read_text()
    assert await leftover_databases(data["meta"]["run_id"]) == []


async def test_search_smoke_run_answers_every_query(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "search", "--search-messages", "5000", "--search-rooms", "4",
                     "--search-queries", "10")
    res = data["result"]
    assert res["messages"] == 5000 and res["common"]["errors"] == 0 and res["rare"]["errors"] == 0
    assert res["common"]["mean_items"] > 0  # common words are in most of the searcher's rooms
    assert res["common"]["latency_ms"]["count"] == 5
    assert await leftover_databases(data["meta"]["run_id"]) == []
