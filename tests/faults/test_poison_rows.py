"""Poison in a room's stream (entries PostgreSQL refuses, or that are not messages at all),
among real messages: the real worker flushes every other message, sets the poison aside in
`dead_letters`, and the room's flush goes on (the stream is trimmed, nothing stays pending).

The door refuses such text since issue 9, so the entries are put straight into the test's
own Redis, between messages sent through the real accept script."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import asyncpg
import pytest

from app.ids import uuid7
from tests.faults._kit import Clock, Ledger, drained, fill, inproc, pg_messages, report, users_and_rooms, verdict

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 3
CHUNK = 100  # real messages between two poison entries
BATCH = 50


def _message(room_id: str, seq: int, sender: str, body: str, client_id: str | None = None) -> str:
    return json.dumps({"id": uuid7(), "room_id": room_id, "seq": seq, "sender_id": sender, "kind": "text",
                       "body": body, "file": None, "client_id": client_id,
                       "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")})


POISONS = {
    # what a message with a NUL looks like in the cache (PostgreSQL text refuses 0x00)
    "nul_body": lambda room, seq, sender: _message(room, seq, sender, "hi\u0000there"),
    "nul_client_id": lambda room, seq, sender: _message(room, seq, sender, "ok", client_id="c\u0000d"),
    # a lone surrogate: valid JSON escape, not encodable as UTF-8
    "lone_surrogate": lambda room, seq, sender: _message(room, seq, sender, "x").replace('"x"', '"\\ud800"'),
    "garbage": lambda room, seq, sender: b"\xff\x00 not a message {",
}


@pytest.mark.timeout(150)
async def test_poison_entries_are_set_aside_and_every_other_message_reaches_postgres(stack) -> None:
    clock = Clock()
    server, base = stack.server()
    users, rooms = users_and_rooms(base, ROOMS)
    room_ids = [r["id"] for r in rooms]
    sender = users[0].id
    settings = stack.settings(FLUSH_BACKLOG_THRESHOLD=str(10**9))
    ledger = Ledger()
    poison: dict[str, set[int]] = {r: set() for r in room_ids}
    async with inproc(settings) as ip:
        for kind, make in POISONS.items():
            await fill(ip, room_ids, sender, CHUNK, ledger=ledger, tag=kind)
            for room in room_ids:
                seq = await ip.redis.incr(ip.keys.room_seq(room))
                await ip.redis.xadd(ip.keys.room_log(room), {"m": make(room, seq, sender)}, id=f"{seq}-0")
                poison[room].add(seq)
        await fill(ip, room_ids, sender, CHUNK, ledger=ledger, tag="tail")
        n_poison = sum(len(s) for s in poison.values())

        t = time.monotonic()
        worker = stack.worker(FLUSH_BATCH_SIZE=str(BATCH))
        drain = await drained(ip.redis, ip.keys, settings.database_url, ledger.acked, 60, settings=settings,
                              tick_every_s=3.0)
        flush_s = time.monotonic() - t
        cached = [await ip.redis.xlen(ip.keys.room_log(r)) for r in room_ids]
        flushed = [int(await ip.redis.get(ip.keys.room_flushed(r)) or 0) for r in room_ids]
        top = [int(await ip.redis.get(ip.keys.room_seq(r))) for r in room_ids]
    rows = await pg_messages(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        dead = await conn.fetch("SELECT room_id::text, seq, error FROM dead_letters ORDER BY room_id, seq")
    finally:
        await conn.close()
    v = verdict(ledger, rows, room_ids)
    dead_seqs = {r: {d["seq"] for d in dead if d["room_id"] == r} for r in room_ids}
    report("poison rows in a stream", load=f"{ROOMS} rooms x {len(POISONS) + 1}x{CHUNK} real msgs",
           poison_kinds=",".join(POISONS), poison_entries=n_poison, batch=BATCH, acked=v.acked, in_pg=v.in_pg,
           lost=len(v.lost), duplicated=len(v.duplicated), dead_letters=len(dead),
           flushed_eq_top=flushed == top, max_cached=max(cached), drain_s=drain.seconds, ticks=drain.ticks,
           flush_s=flush_s, total_s=clock())
    assert drain.seconds is not None, f"rooms never drained: flushed {flushed} of {top}"
    assert v.lost == [], f"{len(v.lost)} real messages did not reach PostgreSQL"
    assert v.duplicated == [] and v.in_pg == v.acked
    # The only holes in PostgreSQL's seqs are the poison entries, each set aside once.
    assert {r: set(g) for r, g in v.gaps.items()} == poison
    assert dead_seqs == poison, dead
    assert flushed == top and max(cached) <= settings.cache_tail
    assert worker.alive()
