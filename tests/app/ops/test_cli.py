"""Operator commands: `python -m app.ops.cli status` and `python -m app.ops.cli flush`."""

from __future__ import annotations

import subprocess
import sys
import uuid

from tests.fill import make_room, push
from tests.support import ROOT


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.ops.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


async def test_status_shows_backlogs_then_flush_drains_every_pending_room(isolated, redis, pool):
    # A prefix of its own: `flush` drains every pending room, and `status` lists every one and
    # every job queue, so other tests' rooms and jobs must not be in the picture.
    keys, env = isolated.keys, isolated.env
    rooms = []
    for n in (1500, 3):
        sender, room = await make_room()
        await push(redis, keys, room, sender, n)
        rooms.append((room, n))

    status = _cli(env, "status")
    assert status.returncode == 0, status.stderr
    lines = {line.split()[-1]: line.split() for line in status.stdout.splitlines() if line.split()}
    for room, n in rooms:
        assert lines[room][:3] == [str(n), str(n), "0"]  # backlog, seq, flushed
    assert "job queues" in status.stdout and lines["default"][-1] == "default"

    flush = _cli(env, "flush")
    assert flush.returncode == 0, flush.stdout + flush.stderr
    for room, n in rooms:
        assert f"{room}  rows={n} " in flush.stdout
        assert await pool.fetchval("SELECT count(DISTINCT seq) FROM messages WHERE room_id = $1",
                                   uuid.UUID(room)) == n
        assert not await redis.sismember(keys.pending_rooms(), room)

    after = _cli(env, "status")
    assert after.returncode == 0, after.stderr
    assert all(room not in after.stdout for room, _ in rooms)
    assert set(await redis.smembers(keys.pending_rooms())) == set()
