"""PostgreSQL crashes (kill -9 of the postmaster and its backends) while the worker is inside a
flush transaction, and restarts on the same data directory: the flush is retried, nothing is
trimmed from Redis before PostgreSQL committed it, and no acknowledged message is lost.

A sampler checks the write-behind invariant throughout: every seq below a room's first cached
entry is in PostgreSQL (Redis is read first, then PostgreSQL, as history reads do)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.faults._kit import Clock, drained, fill, inproc, pg_count, pg_messages, report, users_and_rooms, verdict

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 20
PER_ROOM = 1_500
BATCH = 100


@pytest.mark.timeout(180)
async def test_postgres_restarted_mid_batch_flush_retries_and_loses_nothing(stack) -> None:
    clock = Clock()
    server, base = stack.server()
    users, rooms = users_and_rooms(base, ROOMS)
    room_ids = [r["id"] for r in rooms]
    settings = stack.settings(FLUSH_BACKLOG_THRESHOLD=str(10**9))
    db_url = settings.database_url
    violations: list[str] = []
    samples = {"ok": 0, "pg_down": 0}

    async with inproc(settings) as ip:
        ledger = await fill(ip, room_ids, users[0].id, PER_ROOM)
        total = len(ledger.acked)

        async def sample_invariant(stop: asyncio.Event) -> None:
            while not stop.is_set():
                firsts = {}
                for r in room_ids:
                    head = await ip.redis.xrange(ip.keys.room_log(r), "-", "+", count=1)
                    firsts[r] = int(head[0][0].split("-")[0]) if head else None
                try:
                    conn = await asyncpg.connect(db_url, timeout=1)
                    try:
                        rows = await conn.fetch("SELECT room_id::text, seq FROM messages")
                    finally:
                        await conn.close()
                # InternalClientError: asyncpg's protocol state after PostgreSQL died under a
                # fresh connection (seen once in CI); the sampler only observes, so that is "down".
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                        asyncio.TimeoutError):
                    samples["pg_down"] += 1
                    await asyncio.sleep(0.1)
                    continue
                have: dict[str, set[int]] = {r: set() for r in room_ids}
                for row in rows:
                    have[row[0]].add(int(row[1]))
                for r, first in firsts.items():
                    below = set(range(1, first)) if first else set(range(1, PER_ROOM + 1))
                    missing = below - have[r]
                    if missing:
                        violations.append(f"room {r}: {len(missing)} seqs trimmed from Redis but not in PostgreSQL")
                samples["ok"] += 1
                await asyncio.sleep(0.1)

        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_invariant(stop))
        from app.jobs import enqueue_sync

        for r in room_ids:
            enqueue_sync(settings, "flush_room", r)
        worker = stack.worker(FLUSH_BATCH_SIZE=str(BATCH))
        # Crash PostgreSQL once a part is committed and a flush transaction is open right now.
        t0 = time.monotonic()
        open_tx = 0
        while True:
            assert time.monotonic() - t0 < 60, "the worker never got going"
            n = await pg_count(db_url)
            if n >= 3_000:
                conn = await asyncpg.connect(db_url)
                try:
                    open_tx = int(await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE xact_start IS NOT NULL"
                        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                        " AND query NOT LIKE 'SELECT room_id::text, seq FROM messages%'"))  # the sampler
                finally:
                    await conn.close()
                if open_tx:
                    break
            await asyncio.sleep(0.005)
        stack.pg.kill9()
        t_kill = time.monotonic()
        await asyncio.sleep(1.0)  # down long enough for the running batches to fail
        stack.pg.start()
        down_s = time.monotonic() - t_kill
        at_restart = await pg_count(db_url)
        assert 0 < at_restart < total, at_restart

        drain = await drained(ip.redis, ip.keys, db_url, ledger.acked, 90, settings=settings, tick_every_s=5.0)
        stop.set()
        await sampler
        rows = await pg_messages(db_url)
    log = worker.log_text()
    failed_runs = log.count("Failed to process message flush_room")
    retries = log.count("Retrying message")
    v = verdict(ledger, rows, room_ids)
    report("postgres kill -9 + restart mid-batch", load=f"{total} msgs/{ROOMS} rooms", batch=BATCH,
           rows_committed_before_crash=at_restart, open_transactions_at_crash=open_tx, pg_down_s=down_s,
           failed_flush_runs=failed_runs, retries=retries, invariant_samples=samples["ok"],
           samples_while_pg_down=samples["pg_down"], trimmed_before_commit=len(violations),
           acked=v.acked, in_pg=v.in_pg, lost=len(v.lost), duplicated=len(v.duplicated),
           drain_s=drain.seconds, ticks=drain.ticks, total_s=clock())
    assert open_tx >= 1
    assert violations == [], violations[:5]
    assert samples["ok"] >= 5
    assert failed_runs >= 1, "no flush run failed: the crash did not hit a batch"
    assert drain.seconds is not None, "not drained after PostgreSQL came back"
    assert v.lost == [] and v.duplicated == [] and v.in_pg == v.acked and v.gaps == {}
    assert worker.alive()
