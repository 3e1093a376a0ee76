"""Operator commands: `python -m app.cli status` and `python -m app.cli flush`."""

from __future__ import annotations

import subprocess
import sys
import uuid

from tests.conftest import TEST_ENV
from tests.support import ROOT
from tests.tasks.cache_fill import make_room, push


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=TEST_ENV,
                          capture_output=True, text=True, timeout=120)


async def test_status_shows_backlogs_then_flush_drains_every_pending_room(settings, keys, redis, pool):
    rooms = []
    for n in (1500, 3):
        sender, room = await make_room()
        await push(redis, keys, room, sender, n)
        rooms.append((room, n))

    status = _cli("status")
    assert status.returncode == 0, status.stderr
    lines = {line.split()[-1]: line.split() for line in status.stdout.splitlines() if line.split()}
    for room, n in rooms:
        assert lines[room][:3] == [str(n), str(n), "0"]  # backlog, seq, flushed
    assert "job queues" in status.stdout and lines["default"][-1] == "default"

    flush = _cli("flush")
    assert flush.returncode == 0, flush.stdout + flush.stderr
    for room, n in rooms:
        assert f"{room}  rows={n} " in flush.stdout
        assert await pool.fetchval("SELECT count(DISTINCT seq) FROM messages WHERE room_id = $1",
                                   uuid.UUID(room)) == n
        assert not await redis.sismember(keys.pending_rooms(), room)

    after = _cli("status")
    assert all(room not in after.stdout for room, _ in rooms)
