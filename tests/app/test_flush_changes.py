"""The flush of changes and read markers (app/flush/changes.py) on the real Redis and PostgreSQL:
edits, tombstones and reactions reach `messages`, a tombstone's file bytes go, read markers reach
`memberships`, the room leaves the pending set only when all of it is written, and neither a
change arriving mid-flush nor a crash between the two commits loses or undoes anything."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from redis.asyncio import Redis

from app import files, flush, lifecycle, rooms
from app.errors import FileExpired
from app.flush import changes as changes_module
from app.resources import Resources
from app.schemas import file_out
from app.serialize import dumps, loads
from app.settings import Settings
from app.store import scripts
from app.store.keys import Keys
from app.upload import names
from models.file import File
from tests.app.test_messages import new_room, new_user, send


def tailless(settings: Settings) -> Settings:
    return settings.replace(cache_tail=0)


async def run(redis: Redis, keys: Keys, settings: Settings, pool: Any, rid: str) -> flush.FlushResult:
    return await flush.flush_room(rid, redis=redis, keys=keys, settings=settings, pool=pool)


async def row(pool: Any, rid: str, seq: int) -> Any:
    return await pool.fetchrow("SELECT * FROM messages WHERE room_id = $1 AND seq = $2", uuid.UUID(rid), seq)


async def last_version(pool: Any, rid: str) -> int:
    return await pool.fetchval("SELECT last_version FROM rooms WHERE id = $1", uuid.UUID(rid))


async def pending(redis: Redis, keys: Keys, rid: str) -> bool:
    return bool(await redis.sismember(keys.pending_rooms(), rid))


async def sent(redis: Redis, keys: Keys, settings: Settings, rid: str, sender: str, n: int) -> None:
    for i in range(n):
        await send(redis, keys, settings, rid, sender, f"m{i + 1} hi @nobody_here", rate_limit=False)


async def test_changes_flushed_in_the_same_run_as_their_messages(redis: Redis, keys: Keys, settings: Settings,
                                                                 pool: Any, res: Resources,
                                                                 room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    await sent(redis, keys, settings, rid, owner, 3)
    await send(redis, keys, settings, rid, member, "a reply", reply_to=1, rate_limit=False)
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="edited @someone_else")
    await lifecycle.react(res, room_id=rid, seq=2, user_id=member, emoji="👍", add=True)
    await lifecycle.react(res, room_id=rid, seq=2, user_id=owner, emoji="👍", add=True)
    await lifecycle.delete_message(res, room_id=rid, seq=3, user_id=owner)
    assert await redis.zcard(keys.room_changed(rid)) == 3

    got = await run(redis, keys, tailless(settings), pool, rid)

    assert (got.rows, got.changes, got.drained) == (4, 3, True)
    one, two, three, four = [await row(pool, rid, s) for s in (1, 2, 3, 4)]
    assert (one["body"], one["version"], one["mentions"], one["deleted"]) == \
        ("edited @someone_else", 1, ["someone_else"], False)
    assert one["edited_at"] is not None
    assert two["version"] == 3 and loads(two["reactions"]) == [{"emoji": "👍", "count": 2, "user_ids": [member, owner]}]
    assert (three["deleted"], three["body"], three["version"], three["mentions"], three["reactions"]) == \
        (True, "", 4, None, None)
    # the message COPY writes the send's reply_to and mentions
    assert (four["reply_to"], four["mentions"]) == (1, None)
    assert two["mentions"] == ["nobody_here"]
    assert await last_version(pool, rid) == 4
    assert await redis.zcard(keys.room_changed(rid)) == 0
    assert await redis.hlen(keys.room_state(rid)) == 0  # nothing cached any more: no overlay needed
    assert not await pending(redis, keys, rid)


async def test_a_change_to_a_message_flushed_long_before(redis: Redis, keys: Keys, settings: Settings, pool: Any,
                                                         res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    await sent(redis, keys, settings, rid, owner, 5)
    await run(redis, keys, tailless(settings), pool, rid)
    assert not await pending(redis, keys, rid) and await redis.xlen(keys.room_log(rid)) == 0

    await lifecycle.edit_message(res, room_id=rid, seq=2, user_id=owner, body="second thoughts")
    await lifecycle.react(res, room_id=rid, seq=4, user_id=member, emoji="🎉", add=True)
    assert await pending(redis, keys, rid)  # only changes pending: no message

    got = await run(redis, keys, tailless(settings), pool, rid)

    assert (got.rows, got.changes, got.drained) == (0, 2, True)
    assert (await row(pool, rid, 2))["body"] == "second thoughts"
    assert loads((await row(pool, rid, 4))["reactions"])[0]["user_ids"] == [member]
    assert (await row(pool, rid, 3))["version"] == 0  # untouched
    assert not await pending(redis, keys, rid)
    assert await redis.zcard(keys.room_changed(rid)) == 0 and await redis.hlen(keys.room_state(rid)) == 0
    # drained: the change keys got the idle TTL with the others
    assert 0 < await redis.ttl(keys.room_version(rid)) <= settings.room_cache_idle_ttl_s


async def test_the_overlay_stays_while_the_stream_still_holds_the_original(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    await sent(redis, keys, settings, rid, owner, 3)
    await lifecycle.edit_message(res, room_id=rid, seq=3, user_id=owner, body="new")
    s = settings.replace(cache_tail=2)

    await run(redis, keys, s, pool, rid)

    assert (await row(pool, rid, 3))["body"] == "new"
    assert await redis.zcard(keys.room_changed(rid)) == 0
    # seq 3 is still cached as sent: reads need the overlay on top of it
    assert loads(await redis.hget(keys.room_state(rid), "3"))["body"] == "new"
    await sent(redis, keys, settings, rid, owner, 3)
    await run(redis, keys, s, pool, rid)
    # trimmed below 5 now: the overlay entry goes with the original
    assert await redis.hlen(keys.room_state(rid)) == 0


async def test_a_change_arriving_while_the_flush_writes_is_not_lost(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, res: Resources, room: tuple[str, str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    rid, owner, member = room
    await sent(redis, keys, settings, rid, owner, 2)
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="first edit")
    real_write = changes_module._write
    late: list[int] = []

    async def write_then_a_late_change(*args: Any, **kw: Any) -> Any:
        out = await real_write(*args, **kw)  # PostgreSQL committed the batch (version 1)
        if not late:  # ... and before the Redis commit script, a newer change lands
            late.append((await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner,
                                                      body="second edit"))["version"])
        return out

    monkeypatch.setattr(changes_module, "_write", write_then_a_late_change)
    got = await run(redis, keys, tailless(settings), pool, rid)

    assert late == [2]
    assert (await row(pool, rid, 1))["body"] == "first edit"
    # the newer change kept its place in `changed` and its overlay; the room stays pending
    assert await redis.zscore(keys.room_changed(rid), "1") == 2
    assert loads(await redis.hget(keys.room_state(rid), "1"))["body"] == "second edit"
    assert not got.drained and await pending(redis, keys, rid)

    monkeypatch.setattr(changes_module, "_write", real_write)
    got = await run(redis, keys, tailless(settings), pool, rid)
    assert got.drained and not await pending(redis, keys, rid)
    assert ((await row(pool, rid, 1))["body"], (await row(pool, rid, 1))["version"]) == ("second edit", 2)


async def test_a_tombstones_file_bytes_are_removed_and_the_file_expired(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    fid = str(uuid.uuid4())
    rel = names.final_rel(fid, ".pdf", datetime.now(timezone.utc))
    path = names.media_path(settings.media_root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%PDF-1.4 the plan")
    f = await File.create(id=fid, room_id=rid, uploader_id=owner, name="plan.pdf", mime="application/pdf", size=17,
                          status="ready", storage_path=rel)
    await send(redis, keys, settings, rid, owner, "", kind="file", file=file_out(f), rate_limit=False)
    await run(redis, keys, tailless(settings), pool, rid)
    assert str((await row(pool, rid, 1))["file_id"]) == fid
    files.servable(await File.get(id=fid), settings)  # served before the delete

    await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner)
    assert path.is_file()  # the bytes go with the flush, once the tombstone is in PostgreSQL
    got = await run(redis, keys, tailless(settings), pool, rid)

    assert got.files == 1 and not path.exists()
    tomb = await row(pool, rid, 1)
    assert (tomb["deleted"], tomb["file_id"], tomb["body"]) == (True, None, "")
    f = await File.get(id=fid)
    assert (f.status, f.expired) == ("expired", True)
    with pytest.raises(FileExpired) as info:  # GET /files/{id} answers 410 file_expired
        files.servable(f, settings)
    assert info.value.status == 410


async def test_read_markers_are_written_forward_only_and_rdirty_drains(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    await sent(redis, keys, settings, rid, owner, 6)
    # what mark_read.lua writes (the sender's own marker was moved by the sends)
    await redis.hset(keys.room_reads(rid), member, "4")
    await redis.sadd(keys.room_reads_dirty(rid), member)

    got = await run(redis, keys, tailless(settings), pool, rid)

    marks = {str(r["user_id"]): r["last_read_seq"] for r in await pool.fetch(
        "SELECT user_id, last_read_seq FROM memberships WHERE room_id = $1", uuid.UUID(rid))}
    assert marks == {owner: 6, member: 4}
    assert got.markers == 2 and got.drained
    assert await redis.scard(keys.room_reads_dirty(rid)) == 0 and not await pending(redis, keys, rid)
    # `reads` never gets the idle TTL
    assert await redis.ttl(keys.room_reads(rid)) == -1

    # a marker only moves forward in PostgreSQL, whatever Redis says
    await redis.hset(keys.room_reads(rid), member, "2")
    await redis.sadd(keys.room_reads_dirty(rid), member)
    await redis.sadd(keys.pending_rooms(), rid)
    got = await run(redis, keys, tailless(settings), pool, rid)
    assert got.drained and await redis.scard(keys.room_reads_dirty(rid)) == 0
    assert await pool.fetchval("SELECT last_read_seq FROM memberships WHERE room_id = $1 AND user_id = $2",
                               uuid.UUID(rid), uuid.UUID(member)) == 4


async def test_a_marker_that_moves_during_the_flush_stays_dirty(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, room: tuple[str, str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    rid, owner, member = room
    await sent(redis, keys, settings, rid, owner, 6)
    await run(redis, keys, tailless(settings), pool, rid)
    await redis.hset(keys.room_reads(rid), member, "3")
    await redis.sadd(keys.room_reads_dirty(rid), member)
    await redis.sadd(keys.pending_rooms(), rid)
    real = scripts.READS_COMMIT

    async def moved_first(client: Any, script_keys: list[str], args: list[Any]) -> Any:
        await redis.hset(keys.room_reads(rid), member, "5")  # after the UPDATE, before this script
        return await real(client, script_keys, args)

    monkeypatch.setattr(scripts, "READS_COMMIT", moved_first)
    got = await run(redis, keys, tailless(settings), pool, rid)
    monkeypatch.setattr(scripts, "READS_COMMIT", real)

    assert not got.drained and await redis.sismember(keys.room_reads_dirty(rid), member)
    got = await run(redis, keys, tailless(settings), pool, rid)
    assert got.drained and await pool.fetchval(
        "SELECT last_read_seq FROM memberships WHERE room_id = $1 AND user_id = $2",
        uuid.UUID(rid), uuid.UUID(member)) == 5


async def test_a_crash_between_the_commits_is_harmless(redis: Redis, keys: Keys, settings: Settings, pool: Any,
                                                       res: Resources, room: tuple[str, str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rid, owner, member = room
    await sent(redis, keys, settings, rid, owner, 3)
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="edited")
    await lifecycle.delete_message(res, room_id=rid, seq=2, user_id=owner)
    await lifecycle.react(res, room_id=rid, seq=3, user_id=member, emoji="👀", add=True)

    async def crash(*args: Any, **kw: Any) -> Any:
        raise ConnectionError("worker killed after the PostgreSQL commit")

    monkeypatch.setattr(scripts, "CHANGES_COMMIT", crash)
    with pytest.raises(ConnectionError):
        await run(redis, keys, tailless(settings), pool, rid)
    monkeypatch.undo()
    before = [dict(await row(pool, rid, s)) for s in (1, 2, 3)]
    assert [r["version"] for r in before] == [1, 2, 3]  # PostgreSQL committed
    assert await redis.zcard(keys.room_changed(rid)) == 3 and await pending(redis, keys, rid)  # Redis not

    got = await run(redis, keys, tailless(settings), pool, rid)

    assert got.drained and got.skipped == 0
    assert [dict(await row(pool, rid, s)) for s in (1, 2, 3)] == before
    assert await last_version(pool, rid) == 3
    assert await redis.zcard(keys.room_changed(rid)) == 0 and not await pending(redis, keys, rid)


async def test_an_old_overlay_never_overwrites_a_newer_row(redis: Redis, keys: Keys, settings: Settings, pool: Any,
                                                           res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    await sent(redis, keys, settings, rid, owner, 1)
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="one")
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="two")
    await run(redis, keys, tailless(settings), pool, rid)
    # a stale entry reappears (say a replica that lagged): version 1 over PostgreSQL's 2
    old = {"id": str((await row(pool, rid, 1))["id"]), "seq": 1, "sender_id": owner, "kind": "text", "body": "one",
           "file": None, "client_id": None, "created_at": "2026-12-02T00:00:00.000Z", "version": 1}
    await hand_change(redis, keys, rid, 1, 1, old)

    got = await run(redis, keys, tailless(settings), pool, rid)

    assert got.drained and (await row(pool, rid, 1))["body"] == "two"
    assert await redis.zcard(keys.room_changed(rid)) == 0


async def hand_change(redis: Redis, keys: Keys, rid: str, seq: int, version: int, msg: dict[str, Any]) -> None:
    """What change.lua leaves for the flush: the overlay entry, the to-do, the pending room."""
    await redis.hset(keys.room_state(rid), str(seq), dumps(msg))
    await redis.zadd(keys.room_changed(rid), {str(seq): version})
    await redis.sadd(keys.pending_rooms(), rid)


async def test_a_change_postgresql_refuses_is_set_aside_not_blocking(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    await sent(redis, keys, settings, rid, owner, 3)
    await run(redis, keys, tailless(settings), pool, rid)
    base = {"id": str(uuid.uuid4()), "seq": 1, "sender_id": owner, "kind": "text", "file": None,
            "client_id": None, "created_at": "2026-12-02T00:00:00.000Z", "edited_at": "2026-12-02T00:00:01.000Z"}
    await hand_change(redis, keys, rid, 1, 1, {**base, "body": "a NUL \x00 PostgreSQL refuses", "version": 1})
    await hand_change(redis, keys, rid, 2, 2, {**base, "seq": 2, "body": "fine", "version": 2})
    await redis.hset(keys.room_state(rid), "3", "{not json")
    await redis.zadd(keys.room_changed(rid), {"3": 3})

    got = await run(redis, keys, tailless(settings), pool, rid)

    assert (got.changes, got.skipped, got.drained) == (1, 2, True)
    assert (await row(pool, rid, 2))["body"] == "fine"
    assert (await row(pool, rid, 1))["version"] == 0
    dead = await pool.fetch("SELECT seq, error FROM dead_letters WHERE room_id = $1 ORDER BY seq", uuid.UUID(rid))
    assert [d["seq"] for d in dead] == [1, 3] and all(d["error"].startswith("change: ") for d in dead)
    assert await last_version(pool, rid) == 3  # a set-aside change's version is used up all the same
    assert await redis.zcard(keys.room_changed(rid)) == 0 and not await pending(redis, keys, rid)


async def test_a_change_of_a_message_not_yet_in_postgresql_waits_for_it(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    await sent(redis, keys, settings, rid, owner, 4)
    await lifecycle.edit_message(res, room_id=rid, seq=4, user_id=owner, body="edited")
    # a run that writes only the first two messages (one batch, then its time is up)
    s = tailless(settings).replace(flush_batch_size=2)
    got = await flush.flush_room(rid, redis=redis, keys=keys, settings=s, pool=pool, max_run_s=0)

    assert got.flushed == 2 and got.changes == 0 and not got.drained
    assert await redis.zscore(keys.room_changed(rid), "4") == 1
    got = await run(redis, keys, tailless(settings), pool, rid)
    assert got.drained and (await row(pool, rid, 4))["body"] == "edited"


async def test_flush_all_pending_writes_rooms_with_only_changes(
        redis: Redis, keys: Keys, settings: Settings, pool: Any, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    await sent(redis, keys, settings, rid, owner, 2)
    await run(redis, keys, tailless(settings), pool, rid)
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="later")

    results = {r.room_id: r for r in await flush.flush_all_pending(redis=redis, keys=keys,
                                                                   settings=tailless(settings), pool=pool)}

    assert results[rid].drained and results[rid].changes == 1
    assert (await row(pool, rid, 1))["body"] == "later" and not await pending(redis, keys, rid)


async def test_a_deleted_rooms_change_keys_are_forgotten(redis: Redis, keys: Keys, settings: Settings, pool: Any,
                                                         res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    await sent(redis, keys, settings, rid, owner, 1)
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="x")
    await rooms.forget_room(redis, keys, rid)
    for key in (keys.room_version(rid), keys.room_state(rid), keys.room_changed(rid), keys.room_reads(rid),
                keys.room_reads_dirty(rid)):
        assert not await redis.exists(key), key
    assert not await pending(redis, keys, rid)


async def test_the_staged_path_writes_reply_to_and_mentions_too(redis: Redis, keys: Keys, settings: Settings,
                                                                 pool: Any, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    await sent(redis, keys, settings, rid, owner, 2)
    await send(redis, keys, settings, rid, member, "@Someone_Else yes", reply_to=2, rate_limit=False)
    # A worker wrote seq 1 and died before its Redis step: the batch now conflicts and goes the
    # staging way (COPY into the temp table, INSERT ... ON CONFLICT DO NOTHING).
    first = loads((await redis.xrange(keys.room_log(rid), "1-0", "1-0"))[0][1]["m"])
    await flush._write(pool, rid, [(first["id"], rid, 1, owner, "text", first["body"], None, first["client_id"],
                                    datetime.fromisoformat(first["created_at"]), None, ["nobody_here"])])

    got = await run(redis, keys, tailless(settings), pool, rid)

    assert got.flushed == 3 and got.drained
    three = await row(pool, rid, 3)
    assert (three["reply_to"], three["mentions"], three["body"]) == (2, ["someone_else"], "@Someone_Else yes")
    assert (await row(pool, rid, 1))["mentions"] == ["nobody_here"]


async def test_a_change_to_an_idle_room_whose_cache_expired(redis: Redis, keys: Keys, settings: Settings, pool: Any,
                                                            res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    await sent(redis, keys, settings, rid, owner, 3)
    await run(redis, keys, tailless(settings), pool, rid)
    # the idle TTL ran out: stream, counters and flushed mark are gone (the member set stays here)
    await redis.delete(keys.room_log(rid), keys.room_seq(rid), keys.room_flushed(rid), keys.room_version(rid))
    await lifecycle.edit_message(res, room_id=rid, seq=2, user_id=owner, body="much later")
    assert await pending(redis, keys, rid)

    got = await run(redis, keys, tailless(settings), pool, rid)

    assert got.changes == 1 and got.drained and not await pending(redis, keys, rid)
    assert (await row(pool, rid, 2))["body"] == "much later"
    assert await redis.hlen(keys.room_state(rid)) == 0
    assert 0 < await redis.ttl(keys.room_version(rid)) <= settings.room_cache_idle_ttl_s
