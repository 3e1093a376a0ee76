"""The flush never loses, blocks on or duplicates a message: poison entries, a Redis rollback,
idle TTLs and retries after a trim. Real accept script (app.messages.accept_message), real
flush (app.flush.flush_room), the shared Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from app.realtime import events
from app import flush, messages, rooms
from app.store.keys import Keys
from app.resources import Resources
from app.rooms import CreateRoom
from app.schemas import message_view
from app.serialize import dumps, loads, now_iso
from app.settings import Settings
from models.user import User
from tests.env import REDIS_URL, TEST_ENV
from tests.support import ROOT


@pytest.fixture
async def pg(db: None) -> Any:
    from app.db import ping_db, raw_pool

    await ping_db()
    return raw_pool()


async def new_room(redis: Redis, keys: Keys) -> tuple[str, str]:
    """(room_id, owner_id) of a fresh room created through the room service."""
    name = f"i{uuid.uuid4().hex[:10]}"
    user = await User.create(username=name, username_lower=name, display_name=name, password_hash="x")
    room = await rooms.create_room(redis=redis, keys=keys, owner_id=str(user.id), data=CreateRoom(name=name))
    return room["id"], str(user.id)


async def send(redis: Redis, keys: Keys, settings: Settings, room_id: str, sender: str, body: str,
               client_id: str | None = None) -> tuple[dict[str, Any], bool]:
    res = Resources.build(settings, redis, keys)  # one per send: its batcher's connection goes back after
    try:
        return await messages.accept_message(res, room_id=room_id, sender_id=sender, body=body, client_id=client_id)
    finally:
        await res.close()


async def inject(redis: Redis, keys: Keys, room_id: str, value: str | bytes) -> int:
    """Append a raw entry at the room's next seq, as if the accept path had written it."""
    seq = int(await redis.incr(keys.room_seq(room_id)))
    if isinstance(value, bytes):
        raw = Redis.from_url(REDIS_URL, decode_responses=False)
        try:
            await raw.xadd(keys.room_log(room_id), {b"m": value}, id=f"{seq}-0")
        finally:
            await raw.aclose()
    else:
        await redis.xadd(keys.room_log(room_id), {"m": value}, id=f"{seq}-0")
    await redis.sadd(keys.pending_rooms(), room_id)
    return seq


def forged(room_id: str, seq: int, sender: str, **fields: Any) -> str:
    """A message JSON in the accept path's layout, with some fields replaced."""
    m = {"id": str(uuid.uuid4()), "room_id": room_id, "seq": seq, "sender_id": sender, "kind": "text",
         "body": "forged", "file": None, "client_id": None, "created_at": now_iso(), **fields}
    return dumps(m)


async def pg_rows(pg: Any, room_id: str) -> list[tuple[int, str, str]]:
    rows = await pg.fetch("SELECT seq, id, body FROM messages WHERE room_id = $1 ORDER BY seq", uuid.UUID(room_id))
    return [(r["seq"], str(r["id"]), r["body"]) for r in rows]


async def drain_events(pubsub: PubSub, room_id: str, until_type: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The room's frames up to and including the first of type `until_type` (fails after timeout)."""
    out: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        msg = await pubsub.get_message(timeout=0.2)
        if msg is None:
            continue
        route, _, frame = events.decode(msg["data"])
        if route == f"r:{room_id}":
            out.append(loads(frame))
            if out[-1]["type"] == until_type:
                return out
    raise AssertionError(f"no {until_type} event for room {room_id} within {timeout}s; got {out}")


# -- poison --------------------------------------------------------------------------

async def test_poison_entries_go_to_dead_letters_and_everything_else_reaches_postgres(
        redis: Redis, keys: Keys, settings: Settings, pg: Any) -> None:
    s = settings.replace(cache_tail=0, flush_batch_size=7)  # several batches, poison spread
    room_id, owner = await new_room(redis, keys)
    good: list[dict[str, Any]] = []
    poison: dict[int, str] = {}
    for i in range(20):
        good.append((await send(redis, keys, s, room_id, owner, f"ok {i}", client_id=f"c{i}"))[0])
        if i == 2:
            poison[await inject(redis, keys, room_id, forged(room_id, 0, owner, body="hi\x00there"))] = "0x00"
        if i == 5:
            poison[await inject(redis, keys, room_id, "{not json")] = "JSONDecodeError"
        if i == 9:
            poison[await inject(redis, keys, room_id, forged(room_id, 0, owner, client_id="a\x00b"))] = "0x00"
        if i == 12:
            poison[await inject(redis, keys, room_id, forged(room_id, 0, owner, kind="k" * 40))] = "too long"
        if i == 15:
            poison[await inject(redis, keys, room_id, b"\xff\xfe not utf-8")] = "UnicodeDecodeError"
        if i == 17:
            poison[await inject(redis, keys, room_id, forged(room_id, 0, owner, sender_id="not-a-uuid"))] = "UUID"
    top = int(await redis.get(keys.room_seq(room_id)))
    assert top == 26 and len(poison) == 6

    res = await flush.flush_room(room_id, redis=redis, keys=keys, settings=s, pool=pg)
    while not res.drained:  # short batches end a run; the next one continues
        res = await flush.flush_room(room_id, redis=redis, keys=keys, settings=s, pool=pg)

    stored = await pg_rows(pg, room_id)
    assert [(q, i) for q, i, _ in stored] == [(m["seq"], m["id"]) for m in good]  # every real message, once
    assert int(await redis.get(keys.room_flushed(room_id))) == top
    assert await redis.xlen(keys.room_log(room_id)) == 0  # trimmed past the poison
    assert not await redis.sismember(keys.pending_rooms(), room_id)
    dead = await pg.fetch("SELECT seq, message_id, entry, error FROM dead_letters WHERE room_id = $1 ORDER BY seq",
                          uuid.UUID(room_id))
    assert [d["seq"] for d in dead] == sorted(poison)
    for d in dead:
        assert poison[d["seq"]] in d["error"], (d["seq"], d["error"])
    nul = next(d for d in dead if d["seq"] == min(poison))
    assert b"hi\\u0000there" in nul["entry"] and nul["message_id"] is not None
    assert next(d for d in dead if poison[d["seq"]] == "UnicodeDecodeError")["entry"] == b"\xff\xfe not utf-8"

    # a re-run (as after a crash before the Redis step) adds no second dead letter
    await redis.set(keys.room_flushed(room_id), 0)
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=s, pool=pg)
    assert await pg.fetchval("SELECT count(*) FROM dead_letters WHERE room_id = $1", uuid.UUID(room_id)) == 6

    status = subprocess.run([sys.executable, "-m", "app.ops.cli", "status"], cwd=ROOT, env=TEST_ENV,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    counted = [line for line in status.stdout.splitlines() if line.startswith("dead letters:")]
    assert counted and int(counted[0].split()[2]) >= 6, status.stdout
    assert any(line.split()[:2] == ["6", room_id] for line in status.stdout.splitlines()), status.stdout


# -- Redis rollback -----------------------------------------------------------------

async def snapshot(redis: Redis, names: list[str]) -> dict[str, bytes | None]:
    raw = Redis.from_url(REDIS_URL, decode_responses=False)
    try:
        return {k: await raw.dump(k) for k in names}
    finally:
        await raw.aclose()


async def restore(redis: Redis, snap: dict[str, bytes | None]) -> None:
    raw = Redis.from_url(REDIS_URL, decode_responses=False)
    try:
        for k, v in snap.items():
            if v is None:
                await raw.delete(k)
            else:
                await raw.restore(k, 0, v, replace=True)
    finally:
        await raw.aclose()


async def test_seqs_survive_a_redis_rollback(redis: Redis, keys: Keys, settings: Settings, pg: Any,
                                             feed: PubSub) -> None:
    room_id, owner = await new_room(redis, keys)
    n, m, k = 5, 4, 3
    first = [(await send(redis, keys, settings, room_id, owner, f"n{i}", client_id=f"n{i}"))[0] for i in range(n)]
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    cids = [keys.room_client_id(room_id, owner, f"{p}{i}") for p, cnt in (("n", n), ("m", m), ("k", k))
            for i in range(cnt)]
    room_keys = [keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id), *cids]
    snap = await snapshot(redis, room_keys)  # what an everysec AOF may come back with

    second = [(await send(redis, keys, settings, room_id, owner, f"m{i}", client_id=f"m{i}"))[0] for i in range(m)]
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    assert [q for q, _, _ in await pg_rows(pg, room_id)] == list(range(1, n + m + 1))

    await restore(redis, snap)  # Redis rolled back behind PostgreSQL
    assert int(await redis.get(keys.room_seq(room_id))) == n
    third = [(await send(redis, keys, settings, room_id, owner, f"k{i}", client_id=f"k{i}"))[0] for i in range(k)]
    assert [x["seq"] for x in third] == [n + 1, n + 2, n + 3]  # re-issued: PostgreSQL holds these seqs
    await drain_events(feed, room_id, "message")  # skip the sends' own events
    while (await feed.get_message(timeout=0.2)) is not None:
        pass

    res = await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    assert res.reseq == k
    frames = await drain_events(feed, room_id, "resync")
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)

    stored = await pg_rows(pg, room_id)
    everyone = first + second + third
    assert [q for q, _, _ in stored] == list(range(1, n + m + k + 1))  # gap-free, unique
    assert {i for _, i, _ in stored} == {x["id"] for x in everyone}  # N+M+K distinct messages
    by_id = {i: (q, body) for q, i, body in stored}
    assert [by_id[x["id"]] for x in second] == [(n + 1 + i, f"m{i}") for i in range(m)]  # originals kept
    assert [by_id[x["id"]] for x in third] == [(n + m + 1 + i, f"k{i}") for i in range(k)]  # moved after them

    items, more = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                                         before=None, after=None, limit=50)
    assert not more and [(x["seq"], x["id"]) for x in items] == [(q, i) for q, i, _ in stored]
    again, created = await send(redis, keys, settings, room_id, owner, "retry", client_id="k1")
    assert not created and (again["id"], again["seq"], again["body"]) == (third[1]["id"], n + m + 2, "k1")

    moved = [f["message"] for f in frames if f["type"] == "message"]
    assert [(x["id"], x["seq"], x["client_id"]) for x in moved] == \
        [(x["id"], n + m + 1 + i, f"k{i}") for i, x in enumerate(third)]
    assert frames[-1] == {"type": "resync", "room_id": room_id, "reason": "redis_rollback"}


async def test_a_redis_restart_raises_counters_before_any_seq_is_reused(
        redis: Redis, keys: Keys, settings: Settings, pg: Any) -> None:
    room_id, owner = await new_room(redis, keys)
    sent = [(await send(redis, keys, settings, room_id, owner, f"m{i}"))[0] for i in range(2)]
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    sent += [(await send(redis, keys, settings, room_id, owner, f"m{i}"))[0] for i in range(2, 4)]
    snap = await snapshot(redis, [keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id)])
    sent += [(await send(redis, keys, settings, room_id, owner, f"m{i}"))[0] for i in range(4, 6)]
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    await restore(redis, snap)  # seq 4, flushed 2, stream 1..4: PostgreSQL has 1..6
    await redis.set(keys.redis_run_id(), "a-previous-redis-process")

    raised = await flush.check_redis_restart(redis=redis, keys=keys, pool=pg)

    assert raised is not None and raised >= 1
    assert int(await redis.get(keys.room_seq(room_id))) == 6
    assert int(await redis.get(keys.room_flushed(room_id))) == 2  # never advanced by the check
    assert [e[0] for e in await redis.xrange(keys.room_log(room_id))] == ["3-0", "4-0"]  # flushed tail dropped
    assert await flush.check_redis_restart(redis=redis, keys=keys, pool=pg) is None  # same run_id now
    msg, _ = await send(redis, keys, settings, room_id, owner, "after restart")
    assert msg["seq"] == 7

    res = await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)

    assert res.reseq == 0  # nothing collided
    items, more = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                                         before=None, after=None, limit=50)
    assert not more and [(m["seq"], m["id"]) for m in items] == \
        [(m["seq"], m["id"]) for m in sent] + [(7, msg["id"])]  # no hole between the old tail and 7
    assert [q for q, _, _ in await pg_rows(pg, room_id)] == list(range(1, 8))


async def test_a_lost_counter_is_seeded_above_seqs_the_prune_deleted(
        redis: Redis, keys: Keys, settings: Settings, pg: Any) -> None:
    room_id, owner = await new_room(redis, keys)
    for i in range(4):
        await send(redis, keys, settings, room_id, owner, f"m{i}")
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    assert await pg.fetchval("SELECT last_seq FROM rooms WHERE id = $1", uuid.UUID(room_id)) == 4
    await pg.execute("DELETE FROM messages WHERE room_id = $1", uuid.UUID(room_id))  # as the prune would
    await redis.delete(keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id))

    msg, _ = await send(redis, keys, settings, room_id, owner, "after prune")

    assert msg["seq"] == 5


# -- bounded Redis ----------------------------------------------------------------------

async def test_a_drained_room_gets_an_idle_ttl_that_the_next_send_removes(
        redis: Redis, keys: Keys, settings: Settings, pg: Any) -> None:
    s = settings.replace(room_cache_idle_ttl_s=600)
    room_id, owner = await new_room(redis, keys)
    await send(redis, keys, s, room_id, owner, "one")
    names = [keys.room_log(room_id), keys.room_seq(room_id), keys.room_flushed(room_id), keys.room_members(room_id)]
    assert [await redis.ttl(k) for k in names] == [-1, -1, -2, -1]

    await flush.flush_room(room_id, redis=redis, keys=keys, settings=s, pool=pg)

    ttls = [await redis.ttl(k) for k in names]
    assert all(0 < t <= 600 for t in ttls), ttls
    msg, _ = await send(redis, keys, s, room_id, owner, "two")
    assert msg["seq"] == 2
    assert [await redis.ttl(k) for k in names] == [-1, -1, -1, -1]


async def test_a_retried_client_id_after_the_trim_is_answered_from_postgres(
        redis: Redis, keys: Keys, settings: Settings, pg: Any) -> None:
    s = settings.replace(cache_tail=0)
    room_id, owner = await new_room(redis, keys)
    first, _ = await send(redis, keys, s, room_id, owner, "once", client_id="r-1")
    assert await redis.get(keys.room_client_id(room_id, owner, "r-1")) == "1"  # the seq, not the message
    again, created = await send(redis, keys, s, room_id, owner, "twice", client_id="r-1")
    assert not created and again == first  # from the stream

    await flush.flush_room(room_id, redis=redis, keys=keys, settings=s, pool=pg)
    assert await redis.xlen(keys.room_log(room_id)) == 0

    later, created = await send(redis, keys, s, room_id, owner, "thrice", client_id="r-1")
    assert not created and later == first  # from PostgreSQL, rendered the same
    assert int(await redis.get(keys.room_seq(room_id))) == 1  # no seq consumed by the retries


async def test_an_orphan_in_another_json_layout_is_moved_intact_and_a_rerun_moves_nothing_twice(
        redis: Redis, keys: Keys, settings: Settings, pg: Any, feed: PubSub) -> None:
    room_id, owner = await new_room(redis, keys)
    kept, _ = await send(redis, keys, settings, room_id, owner, "in postgres")
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    await redis.delete(keys.room_log(room_id))  # rolled back to before the first message
    await redis.set(keys.room_seq(room_id), 0)
    await redis.set(keys.room_flushed(room_id), 0)
    orphan = {"seq": 1, "id": str(uuid.uuid4()), "room_id": room_id, "sender_id": owner, "kind": "text",
              "body": 'keys in another order, "seq":1, inside', "file": None, "client_id": "z",
              "created_at": now_iso()}
    await inject(redis, keys, room_id, dumps(orphan))

    res = await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    assert res.reseq == 1
    await drain_events(feed, room_id, "resync")
    await redis.set(keys.room_flushed(room_id), 0)  # as if the worker died before its commit script
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)

    assert [(q, i) for q, i, _ in await pg_rows(pg, room_id)] == [(1, kept["id"]), (2, orphan["id"])]
    stored = await messages.get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=2)
    # Read back as the API shows every message: the lifecycle fields at their defaults.
    assert stored is not None and {**stored, "seq": 1} == message_view({**orphan})
    again, created = await send(redis, keys, settings, room_id, owner, "retry", client_id="z")
    assert not created and again["id"] == orphan["id"] and again["seq"] == 2


async def test_history_reads_survive_a_poison_entry_and_drop_it_once_it_is_set_aside(
        redis: Redis, keys: Keys, settings: Settings, pg: Any) -> None:
    room_id, owner = await new_room(redis, keys)  # the default CACHE_TAIL: flushed rows stay cached
    good = [(await send(redis, keys, settings, room_id, owner, "before"))[0]]
    nul = await inject(redis, keys, room_id, forged(room_id, 2, owner, body="a\x00b"))
    await inject(redis, keys, room_id, "{garbage")
    good.append((await send(redis, keys, settings, room_id, owner, "after"))[0])

    async def seqs() -> list[int]:
        items, _ = await messages.history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                                          before=None, after=None, limit=50)
        return [m["seq"] for m in items]
    assert await seqs() == [1, nul, 4]  # the garbage entry is skipped, not a failed read

    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)

    assert await redis.xlen(keys.room_log(room_id)) == 0  # no tail kept over set-aside entries
    assert await seqs() == [m["seq"] for m in good] == [1, 4]  # what PostgreSQL stored, nothing else
    await send(redis, keys, settings, room_id, owner, "later")
    await flush.flush_room(room_id, redis=redis, keys=keys, settings=settings, pool=pg)
    assert await redis.xlen(keys.room_log(room_id)) == 1  # the tail is kept again
