"""Smoke runs of the load tool (`python -m bench`): tiny, bounded, no timing assertions.

Each run starts its own Redis, database and server, so these check the tool end to end:
it produces a result, nothing is lost or duplicated, and it cleans up after itself.
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
# Each run starts its own Redis, database and server: past the suite's 120 s default on a busy machine.
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


async def test_realtime_smoke_run_loses_nothing(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "realtime", "--connections", "20", "--rooms", "2", "--rate", "50",
                     "--warmup", "0.5", "--duration", "2", "--drain", "5")
    result = data["result"]
    assert result["connections"] == 20
    step = result["steps"][0]
    assert step["sent"] > 0
    assert step["acked"] == step["sent"]
    assert step["expected_deliveries"] == step["acked"] * 9  # rooms of 10: every other member
    assert step["lost"] == 0
    assert step["duplicates"] == 0
    assert step["rejected"] == 0 and step["unacked"] == 0
    assert "## Targets" in (tmp_path / "summary.md").read_text()
    assert await leftover_databases(data["meta"]["run_id"]) == []


async def test_flush_smoke_run_moves_every_message(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "flush", "--flush-messages", "3000", "--flush-rooms", "3",
                     "--copy-ceiling-rows", "2000")
    result = data["result"]
    assert result["copy_ceiling"]["rows"] == 2000 and result["copy_ceiling"]["rows_per_s"] > 0
    assert result["rows_written"] == 3000
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["rooms_with_gaps"] == 0
    assert result["rooms_left_pending"] == 0
    assert await leftover_databases(data["meta"]["run_id"]) == []


async def test_stack_smoke_run_flushes_during_the_window(tmp_path: Path) -> None:
    # make run's whole tree (launcher: server, worker, scheduler); a backlog of 5 per room makes
    # the worker flush several times inside the 2 s window.
    data = run_bench(tmp_path, "stack", "--connections", "20", "--rooms", "2", "--rate", "50",
                     "--warmup", "0.5", "--duration", "2", "--drain", "5", "--stack-flush-threshold", "5")
    result = data["result"]
    assert result["processes"].startswith("app.ops.launcher")
    step = result["steps"][0]
    assert step["sent"] > 0 and step["acked"] == step["sent"]
    assert step["lost"] == 0 and step["duplicates"] == 0
    assert step["flush"]["rows"] > 0  # the worker really flushed while the load ran
    assert "Targets, round two" in (tmp_path / "summary.md").read_text()
    assert await leftover_databases(data["meta"]["run_id"]) == []


async def test_storm_smoke_run_every_client_catches_up(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "storm", "--storm-connections", "40", "--storm-room-size", "10",
                     "--storm-missed", "2", "--storm-timeout", "30")
    result = data["result"]
    assert result["bare"]["first_connect"]["connected"] == 40
    assert result["server"]["first_connect"]["connected"] == 40
    storm = result["server"]["storm"]
    assert storm["caught_up"] == 40 and storm["gaps"] == 0
    # Each client gets exactly the messages its rooms received while it was away.
    assert storm["missed_expected"] == 40 * 2
    assert storm["missed_received"] == storm["missed_expected"]
    assert await leftover_databases(data["meta"]["run_id"]) == []
