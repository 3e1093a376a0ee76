"""Redis comes back behind PostgreSQL (a host crash with `everysec`, a replica promoted late):
no acknowledged message is lost, every room keeps unique gap-free seqs, and live clients are
told to resync.

Reproduction (issue 9): snapshot Redis's data directory (phase A in it), send phase B and let
the worker flush it to PostgreSQL, kill -9 Redis, put the old directory back, restart. Redis
now hands out again the seqs of phase B, which PostgreSQL holds under other message ids.
Phase C is sent into exactly that window, with a WebSocket client watching."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.store.keys import Keys
from app.store.client import connect_redis
from tests.faults._kit import Clock, Ledger, drained, pg_messages, report, users_and_rooms, verdict
from tests.wsclient import WS

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 5
A, B, C = 10, 10, 5  # messages per room in each phase


async def send_phase(base: str, user, room_ids: list[str], per_room: int, tag: str, ledger: Ledger) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=user.headers) as api:
        async def one(room: str, k: int) -> None:
            # A client retries a failed send with the same client_id (the first send after Redis
            # came back fails on the server's dead connection: 503, nothing stored).
            for _ in range(50):
                resp = await api.post(f"/rooms/{room}/messages",
                                      json={"body": f"{tag} {k}", "client_id": f"{tag}-{k}"})
                if resp.status_code != 503:
                    break
                ledger.failed += 1
                await asyncio.sleep(0.1)
            assert resp.status_code == 201, resp.text
            ledger.ack(resp.json())

        for k in range(per_room):
            await asyncio.gather(*(one(r, k) for r in room_ids))


@pytest.mark.timeout(150)
async def test_redis_rolled_back_behind_postgres_loses_nothing_and_tells_clients(stack) -> None:
    clock = Clock()
    server, base = stack.server()
    worker = stack.worker()
    users, rooms = users_and_rooms(base, ROOMS, n_users=2)
    sender, watcher = users
    room_ids = [r["id"] for r in rooms]
    settings = stack.settings()
    keys = Keys(settings.redis_prefix)
    ledger = Ledger()

    await send_phase(base, sender, room_ids, A, "A", ledger)
    snap = stack.tmp / "redis-snapshot"
    stack.redis.snapshot(snap)  # Redis as it will come back: phase A only

    await send_phase(base, sender, room_ids, B, "B", ledger)
    redis = connect_redis(stack.redis.url)
    try:
        drain_b = await drained(redis, keys, settings.database_url, ledger.acked, 30, settings=settings)
    finally:
        await redis.aclose()
    assert drain_b.seconds is not None, "phase A+B did not reach PostgreSQL"
    pg_before = len(await pg_messages(settings.database_url))
    assert pg_before == ROOMS * (A + B)

    stack.redis.kill9()
    stack.redis.restore(snap)
    stack.redis.start()
    t_restart = time.monotonic()
    redis = connect_redis(stack.redis.url)
    try:
        counters = [int(await redis.get(keys.room_seq(r)) or 0) for r in room_ids]
        # The rollback is real: Redis's counters are behind what PostgreSQL holds.
        assert counters == [A] * ROOMS, counters

        ws = await open_ws(server_ws_url(base), watcher.access_token)
        frames: list[dict] = []

        async def watch() -> None:
            try:
                while True:
                    frames.append(await ws.recv(60))
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - closed at the end
                return

        watching = asyncio.create_task(watch())
        c_ledger = Ledger()
        await send_phase(base, sender, room_ids, C, "C", c_ledger)
        ledger.acked.update(c_ledger.acked)
        reissued = sum(1 for room, seq in c_ledger.acked.values() if seq <= A + B)
        drain = await drained(redis, keys, settings.database_url, ledger.acked, 60, settings=settings,
                              tick_every_s=2.0)
        # Resync frames are published right after the flush that moves the messages.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _rollback_rooms(frames) >= set(room_ids):
            await asyncio.sleep(0.1)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await ws.close()
        # Sends after the repair get seqs above everything PostgreSQL holds.
        d_ledger = Ledger()
        await send_phase(base, sender, room_ids, 1, "D", d_ledger)
        ledger.acked.update(d_ledger.acked)
        drain_d = await drained(redis, keys, settings.database_url, ledger.acked, 30, settings=settings)
    finally:
        await redis.aclose()

    rows = await pg_messages(settings.database_url)
    v = verdict(ledger, rows, room_ids)
    final = {mid: seq for mid, _, seq in rows}
    moved = sum(1 for mid, (_, seq) in c_ledger.acked.items() if final.get(mid) not in (None, seq))
    resync_rooms = _rollback_rooms(frames)
    report("redis rolled back behind postgres",
           load=f"{ROOMS} rooms x (A={A} snapshot, B={B} flushed, C={C} after)",
           pg_rows_before_rollback=pg_before, redis_counter_after_restore=A, c_sends_with_reissued_seq=reissued,
           c_moved_to_new_seq=moved, retried_503s=ledger.failed + c_ledger.failed, acked=v.acked,
           in_pg=v.in_pg, lost=len(v.lost), duplicated=len(v.duplicated), rooms_with_gaps=len(v.gaps),
           rooms_told_resync=f"{len(resync_rooms & set(room_ids))}/{ROOMS}",
           drain_after_rollback_s=drain.seconds, ticks=drain.ticks, since_restart_s=time.monotonic() - t_restart,
           d_seqs=sorted({seq for _, seq in d_ledger.acked.values()}), total_s=clock())
    assert reissued == ROOMS * C, "phase C should have been given seqs PostgreSQL already holds"
    assert drain.seconds is not None and drain_d.seconds is not None, "not everything reached PostgreSQL"
    assert v.lost == [], f"{len(v.lost)} acked messages lost after the rollback"
    assert v.duplicated == []
    assert v.in_pg == v.acked
    assert v.gaps == {}, v.gaps
    assert moved == ROOMS * C, "every phase-C message had to move to a free seq"
    assert resync_rooms >= set(room_ids), f"resync(redis_rollback) only for {len(resync_rooms)} of {ROOMS} rooms"
    assert all(seq > A + B + C for _, seq in d_ledger.acked.values()), "counters not raised above PostgreSQL"
    assert worker.alive() and server.alive()


async def open_ws(url: str, token: str, timeout: float = 15.0) -> WS:
    """Connect like a client does after an outage: retry while the server answers 503."""
    from websockets.exceptions import InvalidStatus

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await WS.open(url, token)
        except (InvalidStatus, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def server_ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


def _rollback_rooms(frames: list[dict]) -> set[str]:
    return {f["room_id"] for f in frames if f.get("type") == "resync" and f.get("reason") == "redis_rollback"}
