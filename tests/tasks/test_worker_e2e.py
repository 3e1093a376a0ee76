"""End to end: live sends over HTTP, the real worker flushing, history read through the API meanwhile.

Server and worker share a Redis prefix of their own (so their own Dramatiq namespace): the
worker runs only the flushes this test asks for. On single-node Redis and on a Redis Cluster
(`redis_engines`, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from app.jobs import enqueue_flush_room
from app.store.keys import Keys
from app.settings import Settings
from tests.env import Engine, Isolated
from tests.factories import make_room as api_room
from tests.factories import make_user
from tests.fill import start_worker, wait_for, wait_worker_ready
from tests.support import OwnServers, ServerProc

pytestmark = [pytest.mark.e2e, pytest.mark.redis_engines]


@pytest.fixture(scope="module")
def iso(redis_engine: Engine) -> Isolated:
    return redis_engine.isolated("e2e")


@pytest.fixture(scope="module")
def settings(iso: Isolated) -> Settings:
    return iso.settings


@pytest.fixture(scope="module")
def keys(iso: Isolated) -> Keys:
    return iso.keys


@pytest.fixture(scope="module")
def server(own_server: OwnServers, iso: Isolated) -> ServerProc:
    return own_server(iso.env, name="server-e2e")


async def _walk(client: httpx.AsyncClient, room: str, headers: dict) -> list[dict]:
    """The room's whole history, oldest first, page by page after the last seq seen."""
    items: list[dict] = []
    while True:
        resp = await client.get(f"/rooms/{room}/messages", params={"after": items[-1]["seq"] if items else 0,
                                                                   "limit": 200}, headers=headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        items += page["items"]
        if not page["has_more"]:
            return items


async def test_history_stays_gap_free_while_the_worker_flushes_live_sends(iso, settings, keys, redis, pool, server,
                                                                          api):
    owner = make_user(api)
    room = api_room(api, owner)["id"]
    total = 1200
    worker = start_worker("worker-e2e", iso.env, FLUSH_BATCH_SIZE="50")
    walks = 0
    overlapped = 0  # walks during which the worker committed and trimmed part of the room
    try:
        await wait_worker_ready(worker)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
            sent: list[int] = []
            done = asyncio.Event()

            async def send(n: int) -> None:
                resp = await client.post(f"/rooms/{room}/messages", json={"body": f"m{n}", "client_id": f"c{n}"},
                                         headers=owner.headers)
                assert resp.status_code == 201, resp.text
                sent.append(resp.json()["seq"])

            async def sender() -> None:
                for lo in range(0, total, 100):
                    await asyncio.gather(*(send(n) for n in range(lo, lo + 100)))
                    await enqueue_flush_room(settings, room)  # flushes keep running under the sends
                done.set()

            async def first_cached() -> int:
                head = await redis.xrange(keys.room_log(room), count=1)
                return int(head[0][0].split("-")[0]) if head else 0

            async def reader() -> None:
                nonlocal walks, overlapped
                while not done.is_set():
                    before = (int(await redis.get(keys.room_flushed(room)) or 0), await first_cached())
                    items = await _walk(client, room, owner.headers)
                    after = (int(await redis.get(keys.room_flushed(room)) or 0), await first_cached())
                    # Both marks moved while the walk ran: a flush committed and trimmed under it.
                    overlapped += after[0] > before[0] and after[1] > before[1]
                    seqs = [m["seq"] for m in items]
                    assert seqs == list(range(1, len(seqs) + 1)), "gap, duplicate or reordering in history"
                    assert len({m["id"] for m in items}) == len(items)
                    walks += 1

            await asyncio.gather(sender(), reader())
            assert sorted(sent) == list(range(1, total + 1))

            async def flushed() -> bool:
                return int(await redis.get(keys.room_flushed(room)) or 0) == total
            await wait_for(flushed, 60, "the worker to flush every message", worker)

            items = await _walk(client, room, owner.headers)
            assert [m["seq"] for m in items] == list(range(1, total + 1))
        rows = await pool.fetch("SELECT seq, body, client_id FROM messages WHERE room_id = $1 ORDER BY seq",
                                uuid.UUID(room))
        assert [r["seq"] for r in rows] == list(range(1, total + 1))
        by_seq = {m["seq"]: m for m in items}
        assert all((by_seq[r["seq"]]["body"], by_seq[r["seq"]]["client_id"]) == (r["body"], r["client_id"])
                   for r in rows)
        assert await redis.xlen(keys.room_log(room)) == settings.cache_tail
        print(f"history walks={walks}, of which overlapped a flush commit+trim={overlapped}")
        assert walks >= 1 and overlapped >= 1, (walks, overlapped)
    finally:
        worker.stop()
    assert "Traceback" not in worker.log_path.read_text(errors="replace"), worker.log_tail(60)
