"""The flush's per-row path (app/flush/write.py: rows_of, gc_paused) against real Redis and PostgreSQL.

The fast path must not change what lands in PostgreSQL or dead_letters, and the collector it
pauses while a batch is parsed must be running again once the flush is done (a worker that
never collects cycles again grows without bound)."""

from __future__ import annotations

import asyncio
import gc
import uuid

from app.flush import flush_room
from app.flush.write import gc_paused, rows_of
from tests.fill import make_room, push


async def test_rows_and_garbage_land_where_they_did_and_the_collector_runs_again(settings, keys, redis, pool):
    sender, room = await make_room()
    sent = await push(redis, keys, room, sender, 30)
    # Entries no accept path writes, among good ones: not JSON, JSON without an id, no "m" field.
    log = keys.room_log(room)
    await redis.xadd(log, {"m": "{not json"}, id="31-0")
    await redis.xadd(log, {"m": '{"kind":"text"}'}, id="32-0")
    await redis.xadd(log, {"x": "1"}, id="33-0")
    await redis.set(keys.room_seq(room), 33)
    assert gc.isenabled()

    res = await flush_room(room, redis=redis, keys=keys, settings=settings, pool=pool)

    assert (res.rows, res.skipped, res.flushed, res.drained) == (30, 3, 33, True)
    rows = await pool.fetch("SELECT id, seq, body, created_at FROM messages WHERE room_id = $1 ORDER BY seq",
                            uuid.UUID(room))
    assert [(str(r["id"]), r["seq"], r["body"]) for r in rows] == [(m["id"], i + 1, m["body"]) for i, m in
                                                                  enumerate(sent)]
    assert rows[0]["created_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z") == sent[0]["created_at"]
    dead = await pool.fetch("SELECT seq, entry FROM dead_letters WHERE room_id = $1 ORDER BY seq", uuid.UUID(room))
    assert [(d["seq"], bytes(d["entry"])) for d in dead] == [(31, b"{not json"), (32, b'{"kind":"text"}'),
                                                             (33, b"x=1")]
    assert gc.isenabled()


async def test_overlapping_reads_keep_the_collector_off_until_the_last_ends():
    entered = asyncio.Event()
    release = asyncio.Event()

    async def long_read() -> None:
        with gc_paused():
            entered.set()
            await release.wait()

    task = asyncio.create_task(long_read())
    await entered.wait()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the first read still holds it
    release.set()
    await task
    assert gc.isenabled()


def test_a_collector_someone_else_turned_off_stays_off():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert rows_of(str(uuid.uuid4()), []) == ([], [], [])
        assert not gc.isenabled()
    finally:
        gc.enable()
