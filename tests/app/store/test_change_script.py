"""The change script (app/store/lua/change.lua via app/store/changes.py) and the accept script's
read-marker and mention bookkeeping, called directly on the real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, AsyncIterator

import pytest
from redis.asyncio import Redis

from app.realtime import events
from app.store import cache, changes, member_sets
from app.store.keys import Keys

POLICY = changes.ChangePolicy(rate_limit=0, rate_window_ms=60_000, reactions_max=3, mention_ttl_s=3600)
NOW = "2026-01-02T03:04:05.678Z"


@pytest.fixture
async def batcher(redis: Redis) -> AsyncIterator[cache.Batcher]:
    b = cache.Batcher(redis.connection_pool)
    yield b
    await b.close()


async def new_room(redis: Redis, keys: Keys, members: tuple[str, ...] = ("u1", "u2", "u3")) -> str:
    rid = str(uuid.uuid4())
    await member_sets.room_created(redis, keys, rid, list(members))
    await changes.seed_version(redis, keys, rid, 0)
    return rid


async def post(batcher: cache.Batcher, keys: Keys, rid: str, sender: str = "u1", body: str = "hello",
               kind: str = "text", mentions: tuple[str, ...] = ()) -> dict[str, Any]:
    """One message through the real accept script, with the JSON the accept path builds."""
    policy = cache.AcceptPolicy(rate_limit=0, rate_window_ms=60_000, idempotency_ttl_s=60,
                                backlog_threshold=1000, flush_queued_ttl_s=30, mention_ttl_s=3600)
    after = json.dumps({"sender_id": sender or None, "kind": kind, "body": body, "file": None, "client_id": None,
                        "created_at": NOW, "edited_at": None, "deleted": False, "version": 0,
                        "reply_to": None, "mentions": list(mentions)}, separators=(",", ":"))
    got = await cache.accept(batcher, keys, policy, room_id=rid, sender_id=sender or None, client_id=None,
                             before_seq=f'{{"id":"{uuid.uuid4()}","room_id":"{rid}","seq":',
                             after_seq="," + after[1:], event=events.message_payload_parts(rid),
                             rate_limited=False, mentions=list(mentions))
    assert got.code == cache.OK
    return json.loads(got.message)


async def run(redis: Redis, keys: Keys, rid: str, op: str, seq: int, actor: str = "u1",
              policy: changes.ChangePolicy = POLICY, **kw: Any) -> changes.ChangeResult:
    event = events.change_payload_parts(rid, changes.change_kind(op))
    if op == "edit" and "mentions" in kw:
        kw["mentions_json"] = json.dumps(kw["mentions"])
    return await changes.change(redis, keys, policy, op=op, room_id=rid, seq=seq, actor=actor, event=event,
                                now=NOW, **kw)


async def room_keys_snapshot(redis: Redis, keys: Keys, rid: str) -> tuple[Any, ...]:
    return (await redis.get(keys.room_version(rid)), await redis.hgetall(keys.room_state(rid)),
            await redis.zrange(keys.room_changed(rid), 0, -1, withscores=True))


# -- accept: read marker and mentions ----------------------------------------------------

async def test_accept_moves_the_senders_marker_and_records_mentions(redis: Redis, keys: Keys,
                                                                    batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    await post(batcher, keys, rid, "u1", "hi @bob and @carol", mentions=("bob", "carol"))
    await post(batcher, keys, rid, "u2", "@bob again", mentions=("bob",))
    await post(batcher, keys, rid, "", "u3 joined", kind="system")
    assert await redis.hgetall(keys.room_reads(rid)) == {"u1": "1", "u2": "2"}  # system: nobody's
    assert await redis.smembers(keys.room_reads_dirty(rid)) == {"u1", "u2"}
    assert await redis.zrange(keys.room_mentions(rid, "bob"), 0, -1, withscores=True) == [("1", 1.0), ("2", 2.0)]
    assert await redis.zrange(keys.room_mentions(rid, "carol"), 0, -1) == ["1"]
    assert 0 < await redis.ttl(keys.room_mentions(rid, "bob")) <= 3600


# -- edits -------------------------------------------------------------------------------

async def test_edit_takes_the_next_version_updates_state_mentions_and_publishes(
        redis: Redis, keys: Keys, batcher: cache.Batcher, feed: Any) -> None:
    rid = await new_room(redis, keys)
    orig = await post(batcher, keys, rid, "u1", "hi @bob and @carol", mentions=("bob", "carol"))
    await redis.delete(keys.pending_rooms())  # the change must put the room back on the to-do list
    got = await run(redis, keys, rid, "edit", 1, body="now @dave/@bob", mentions=["dave", "bob"])
    assert (got.code, got.version) == (changes.OK, 1)
    msg = json.loads(got.message)
    assert msg == {**orig, "body": "now @dave/@bob", "edited_at": NOW, "version": 1, "mentions": ["dave", "bob"]}
    assert await redis.hget(keys.room_state(rid), "1") == got.message
    assert await redis.zrange(keys.room_changed(rid), 0, -1, withscores=True) == [("1", 1.0)]
    assert await redis.sismember(keys.pending_rooms(), rid)
    assert await redis.zrange(keys.room_mentions(rid, "carol"), 0, -1) == []  # no longer mentioned
    assert await redis.zrange(keys.room_mentions(rid, "bob"), 0, -1) == ["1"]
    assert await redis.zrange(keys.room_mentions(rid, "dave"), 0, -1) == ["1"]
    frames = []
    while (m := await feed.get_message(timeout=0.5)) is not None:
        route, exclude, frame = events.decode(m["data"])
        if route == f"r:{rid}" and frame.startswith('{"type":"message_updated"'):
            frames.append((exclude, json.loads(frame)))
    assert frames == [("", {"type": "message_updated", "room_id": rid, "change": "edit", "message": msg})]
    # an identical edit changes nothing: no version, no "edited" mark moves
    same = await run(redis, keys, rid, "edit", 1, body="now @dave/@bob", mentions=["dave", "bob"])
    assert same.code == changes.UNCHANGED and json.loads(same.message) == msg
    assert await redis.get(keys.room_version(rid)) == "1"
    # an edit that mentions nobody leaves no "mentions":{} behind (cjson's empty-table trap)
    none = await run(redis, keys, rid, "edit", 1, body="plain", mentions=[])
    assert '"mentions"' not in none.message and json.loads(none.message)["version"] == 2
    assert await redis.zrange(keys.room_mentions(rid, "dave"), 0, -1) == []


async def test_only_the_sender_edits_and_only_text(redis: Redis, keys: Keys, batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    await post(batcher, keys, rid, "u1")
    await post(batcher, keys, rid, "u1", "", kind="file")
    await post(batcher, keys, rid, "", "note", kind="system")
    before = await room_keys_snapshot(redis, keys, rid)
    assert (await run(redis, keys, rid, "edit", 1, actor="u2", body="x")).reason == "not_sender"
    assert (await run(redis, keys, rid, "edit", 1, actor="u2", body="x", moderator=True)).reason == "not_sender"
    assert (await run(redis, keys, rid, "edit", 2, body="x")).reason == "not_editable"
    assert (await run(redis, keys, rid, "edit", 3, body="x")).reason == "not_sender"
    assert await room_keys_snapshot(redis, keys, rid) == before


# -- refusals that need the caller ----------------------------------------------------------

async def test_refusals_write_nothing(redis: Redis, keys: Keys, batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    await post(batcher, keys, rid, "u1")
    before = await room_keys_snapshot(redis, keys, rid)
    assert (await run(redis, keys, rid, "react_add", 1, actor="stranger", emoji="👍")).code == changes.NOT_MEMBER
    assert (await run(redis, keys, rid, "react_add", 0, emoji="👍")).code == changes.NOT_FOUND
    assert (await run(redis, keys, rid, "react_add", 2, emoji="👍")).code == changes.NOT_FOUND
    assert (await run(redis, keys, rid, "delete", 1, actor="u2")).code == changes.NOT_SENDER
    assert await room_keys_snapshot(redis, keys, rid) == before
    await redis.delete(keys.room_version(rid))
    assert (await run(redis, keys, rid, "react_add", 1, emoji="👍")).code == changes.VERSION_MISSING
    await redis.delete(keys.room_seq(rid))
    assert (await run(redis, keys, rid, "react_add", 1, emoji="👍")).code == changes.SEQ_MISSING
    await redis.delete(keys.room_members(rid))
    assert (await run(redis, keys, rid, "react_add", 1, emoji="👍")).code == changes.MEMBERS_MISSING
    assert not await redis.exists(keys.room_state(rid), keys.room_changed(rid))


async def test_an_entry_gone_from_the_stream_needs_the_postgres_row_and_the_overlay_outranks_it(
        redis: Redis, keys: Keys, batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    orig = await post(batcher, keys, rid, "u1", "old text")
    await redis.xtrim(keys.room_log(rid), minid=2)  # flushed and trimmed
    assert (await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="👍")).code == changes.NEED_BASE
    # the caller's copy of the row, as the read path renders it (empty lists, a viewer's `me`)
    row = {**orig, "mentions": [], "reactions": [{"emoji": "🎉", "count": 1, "user_ids": ["u3"], "me": True}]}
    got = await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="👍", base=json.dumps(row))
    assert got.code == changes.OK
    msg = json.loads(got.message)
    assert msg["reactions"] == [{"emoji": "🎉", "count": 1, "user_ids": ["u3"]},
                                {"emoji": "👍", "count": 1, "user_ids": ["u2"]}]
    assert "mentions" not in msg and msg["version"] == 1
    # now the overlay holds it: a stale base is ignored
    again = await run(redis, keys, rid, "react_add", 1, actor="u3", emoji="👍", base=json.dumps(orig))
    assert [r["user_ids"] for r in json.loads(again.message)["reactions"]] == [["u3"], ["u2", "u3"]]


# -- deletes --------------------------------------------------------------------------------

async def test_delete_leaves_a_tombstone_and_later_changes_are_refused(
        redis: Redis, keys: Keys, batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    orig = await post(batcher, keys, rid, "u1", "bye @bob", mentions=("bob",))
    await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="👍")
    got = await run(redis, keys, rid, "delete", 1, actor="u2", moderator=True)
    assert (got.code, got.version) == (changes.OK, 2)
    tomb = json.loads(got.message)
    assert tomb == {**{k: v for k, v in orig.items() if k != "mentions"},
                    "body": "", "file": None, "reply_to": None, "deleted": True, "version": 2}
    assert await redis.zrange(keys.room_mentions(rid, "bob"), 0, -1) == []
    again = await run(redis, keys, rid, "delete", 1)
    assert again.code == changes.UNCHANGED and json.loads(again.message) == tomb
    assert (await run(redis, keys, rid, "edit", 1, body="x")).code == changes.GONE
    assert (await run(redis, keys, rid, "react_add", 1, emoji="👍")).code == changes.GONE
    assert (await run(redis, keys, rid, "react_remove", 1, actor="u2", emoji="👍")).code == changes.GONE
    assert await redis.get(keys.room_version(rid)) == "2"


# -- reactions ------------------------------------------------------------------------------

async def test_reactions_are_idempotent_ordered_and_capped(redis: Redis, keys: Keys, batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    await post(batcher, keys, rid, "u1")
    assert (await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="👍")).version == 1
    dup = await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="👍")
    assert dup.code == changes.UNCHANGED
    assert (await run(redis, keys, rid, "react_remove", 1, actor="u3", emoji="👍")).code == changes.UNCHANGED
    assert (await run(redis, keys, rid, "react_remove", 1, actor="u3", emoji="❤")).code == changes.UNCHANGED
    for user, emoji in (("u3", "👍"), ("u1", "❤"), ("u1", "👍"), ("u2", "🎉")):
        assert (await run(redis, keys, rid, "react_add", 1, actor=user, emoji=emoji)).code == changes.OK
    over = await run(redis, keys, rid, "react_add", 1, actor="u3", emoji="🚀")  # cap is 3 distinct emoji
    assert over.code == changes.TOO_MANY
    got = await run(redis, keys, rid, "react_add", 1, actor="u3", emoji="🎉")  # an existing one is fine
    assert json.loads(got.message)["reactions"] == [
        {"emoji": "👍", "count": 3, "user_ids": ["u2", "u3", "u1"]},
        {"emoji": "❤", "count": 1, "user_ids": ["u1"]},
        {"emoji": "🎉", "count": 2, "user_ids": ["u2", "u3"]}]
    assert got.version == 6 and await redis.get(keys.room_version(rid)) == "6"
    for user, emoji in (("u1", "❤"), ("u2", "👍"), ("u3", "👍"), ("u1", "👍"), ("u2", "🎉"), ("u3", "🎉")):
        last = await run(redis, keys, rid, "react_remove", 1, actor=user, emoji=emoji)
        assert last.code == changes.OK
    assert '"reactions"' not in last.message and json.loads(last.message)["version"] == 12


async def test_concurrent_changes_take_gap_free_versions(redis: Redis, keys: Keys, batcher: cache.Batcher) -> None:
    users = tuple(f"u{i}" for i in range(50))
    rid = await new_room(redis, keys, users)
    await post(batcher, keys, rid, "u0")
    await post(batcher, keys, rid, "u0")
    got = await asyncio.gather(*(run(redis, keys, rid, "react_add", 1 + i % 2, actor=u, emoji="👍")
                                 for i, u in enumerate(users)))
    assert sorted(g.version for g in got) == list(range(1, 51))
    state = {k: json.loads(v) for k, v in (await redis.hgetall(keys.room_state(rid))).items()}
    assert {k: m["reactions"][0]["count"] for k, m in state.items()} == {"1": 25, "2": 25}
    changed = dict(await redis.zrange(keys.room_changed(rid), 0, -1, withscores=True))
    assert changed == {k: float(m["version"]) for k, m in state.items()}


async def test_rate_limit_counts_changes_not_no_ops(redis: Redis, keys: Keys, batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    await post(batcher, keys, rid, "u1")
    tight = changes.ChangePolicy(rate_limit=2, rate_window_ms=60_000, reactions_max=20, mention_ttl_s=3600)
    await redis.delete(keys.rate("chg", "u2"))
    assert (await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="a", policy=tight)).code == changes.OK
    assert (await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="a",
                      policy=tight)).code == changes.UNCHANGED
    assert (await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="b", policy=tight)).code == changes.OK
    limited = await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="c", policy=tight)
    assert limited.code == changes.RATE_LIMITED and 0 < limited.retry_ms <= 60_000
    assert await redis.get(keys.room_version(rid)) == "2"


async def test_a_change_removes_the_idle_ttl_of_a_drained_room(redis: Redis, keys: Keys,
                                                               batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    await post(batcher, keys, rid, "u1")
    await redis.set(keys.room_flushed(rid), 1)
    idle = [keys.room_log(rid), keys.room_seq(rid), keys.room_flushed(rid), keys.room_members(rid),
            keys.room_version(rid)]
    for key in idle:
        await redis.expire(key, 100)
    await run(redis, keys, rid, "edit", 1, body="changed")
    assert [await redis.ttl(k) for k in idle + [keys.room_state(rid)]] == [-1] * 6


async def test_a_lost_version_counter_is_seeded_above_everything_handed_out(redis: Redis, keys: Keys,
                                                                            batcher: cache.Batcher) -> None:
    rid = await new_room(redis, keys)
    await post(batcher, keys, rid, "u1")
    for i in range(3):
        await run(redis, keys, rid, "react_add", 1, emoji=f"e{i}")
    await redis.delete(keys.room_version(rid))
    assert await changes.seed_version(redis, keys, rid, 2) == 3  # an unflushed change is newer than PG
    assert await changes.seed_version(redis, keys, rid, 9) == 3  # no-op: it exists
    await redis.delete(keys.room_version(rid), keys.room_changed(rid))
    assert await changes.seed_version(redis, keys, rid, 7) == 7
    assert (await run(redis, keys, rid, "react_add", 1, actor="u2", emoji="e0")).version == 8
