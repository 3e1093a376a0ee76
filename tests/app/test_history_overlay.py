"""History, get_message and changes_since with the change overlay (issue 12), on the real Redis
and PostgreSQL: each message in its latest state wherever that state lives (stream entry,
`state` overlay, PostgreSQL row), the same before and after a flush, quotes rendered from the
originals as they are now, and catch-up by version merging Redis and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from app import lifecycle, messages, rooms
from app.resources import Resources
from app.serialize import dumps
from app.settings import Settings
from app.store.keys import Keys
from tests.app.test_messages import new_room, new_user, send


async def move_to_db(redis: Redis, keys: Keys, settings: Settings, room_id: str, upto: int) -> None:
    """The real flush until the room's messages up to `upto` and all its changes and markers are
    in PostgreSQL (no tail kept: the stream is emptied)."""
    from app import flush
    from app.db import raw_pool

    s = settings.replace(cache_tail=0)
    for _ in range(20):
        await flush.flush_room(room_id, redis=redis, keys=keys, settings=s, pool=raw_pool())
        if (int(await redis.get(keys.room_flushed(room_id)) or 0) >= upto
                and not await redis.zcard(keys.room_changed(room_id))
                and not await redis.scard(keys.room_reads_dirty(room_id))):
            return
    raise AssertionError("the flush did not drain the room")


async def page(res: Resources, rid: str, viewer: str | None = None, **kw: Any) -> tuple[list[dict[str, Any]], bool]:
    args: dict[str, Any] = {"before": None, "after": None, "limit": 50, **kw}
    return await messages.history(redis=res.redis, keys=res.keys, settings=res.settings, room_id=rid,
                                  viewer_id=viewer, **args)


async def all_pages(res: Resources, rid: str, viewer: str, limit: int) -> list[dict[str, Any]]:
    """The whole room paged backwards `limit` at a time (what a scrolling client sees)."""
    out: list[dict[str, Any]] = []
    before = None
    while True:
        items, more = await page(res, rid, viewer, before=before, limit=limit)
        out = items + out
        if not more:
            return out
        before = items[0]["seq"]


async def changes(res: Resources, rid: str, after: int, max_seq: int, limit: int,
                  viewer: str | None = None) -> tuple[list[dict[str, Any]], bool, int]:
    return await messages.changes_since(res, room_id=rid, after_version=after, max_seq=max_seq, limit=limit,
                                        viewer_id=viewer)


async def test_the_overlay_outranks_the_stream_entry(res: Resources, settings: Settings,
                                                    room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    for i in range(1, 4):
        await send(res.redis, res.keys, settings, rid, owner, f"m{i}")
    await lifecycle.edit_message(res, room_id=rid, seq=2, user_id=owner, body="m2 edited")
    await lifecycle.react(res, room_id=rid, seq=3, user_id=member, emoji="👍", add=True)
    await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner)

    items, more = await page(res, rid, member)
    assert not more and [m["seq"] for m in items] == [1, 2, 3]
    one, two, three = items
    assert (one["deleted"], one["body"], one["version"]) == (True, "", 3)
    assert (two["body"], two["version"], two["edited_at"] is not None) == ("m2 edited", 1, True)
    assert three["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [member], "me": True}]
    # The viewer decides `me`; the owner did not react.
    owner_view, _ = await page(res, rid, owner)
    assert owner_view[2]["reactions"][0]["me"] is False
    # Every item has every lifecycle field, even the unchanged ones.
    for m in items:
        assert {"edited_at", "deleted", "version", "reply_to", "mentions", "reactions"} <= set(m)
    got = await messages.get_message(redis=res.redis, keys=res.keys, settings=settings, room_id=rid, seq=2,
                                     viewer_id=member)
    assert got == two


async def test_history_is_the_same_before_and_after_the_flush(res: Resources, settings: Settings,
                                                              room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    for i in range(1, 31):
        await send(res.redis, res.keys, settings, rid, owner if i % 2 else member, f"message {i}")
    await send(res.redis, res.keys, settings, rid, member, "answer", reply_to=4)
    for seq in (2, 9, 17):
        await lifecycle.edit_message(res, room_id=rid, seq=seq, user_id=owner if seq % 2 else member,
                                     body=f"edited {seq}")
    for seq in (3, 17, 25):
        await lifecycle.react(res, room_id=rid, seq=seq, user_id=owner, emoji="🎉", add=True)
    await lifecycle.delete_message(res, room_id=rid, seq=4, user_id=owner)  # the reply's original
    await lifecycle.delete_message(res, room_id=rid, seq=11, user_id=owner)

    before = await all_pages(res, rid, owner, 50)
    paged = await all_pages(res, rid, owner, 7)
    assert paged == before and [m["seq"] for m in before] == list(range(1, 32))
    assert before[30]["reply_to"] == {"seq": 4, "sender_id": before[3]["sender_id"], "excerpt": "", "deleted": True}
    assert before[16]["body"] == "edited 17" and before[16]["reactions"][0]["me"] is True
    assert before[10]["deleted"] and before[10]["body"] == ""

    await move_to_db(res.redis, res.keys, settings, rid, 31)  # messages and their changes in PostgreSQL
    assert await res.redis.zcard(res.keys.room_changed(rid)) == 0
    assert await all_pages(res, rid, owner, 50) == before
    assert await all_pages(res, rid, owner, 7) == before
    # A change after the flush lives in the overlay over a PostgreSQL row.
    await lifecycle.edit_message(res, room_id=rid, seq=9, user_id=owner, body="edited again")
    after = await all_pages(res, rid, owner, 7)
    assert after[8]["body"] == "edited again" and after[8]["version"] > before[8]["version"]
    assert [m for i, m in enumerate(after) if i != 8] == [m for i, m in enumerate(before) if i != 8]


async def test_a_newer_postgresql_row_wins_over_an_older_overlay(res: Resources, settings: Settings,
                                                                 room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    sent, _ = await send(res.redis, res.keys, settings, rid, owner, "original")
    await send(res.redis, res.keys, settings, rid, owner, "other")
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="edited")
    await move_to_db(res.redis, res.keys, settings, rid, 2)
    assert await res.redis.hlen(res.keys.room_state(rid)) == 0
    # An overlay entry older than the row (what a reader holding an overlay read from before
    # the changes flush would see): the row's higher version wins.
    stale = {**sent, "body": "stale", "version": 0}
    await res.redis.hset(res.keys.room_state(rid), "1", dumps(stale))
    items, _ = await page(res, rid)
    assert (items[0]["body"], items[0]["version"]) == ("edited", 1)
    # And an overlay newer than the row wins over it.
    await res.redis.hset(res.keys.room_state(rid), "1", dumps({**sent, "body": "newer", "version": 7}))
    items, _ = await page(res, rid)
    assert (items[0]["body"], items[0]["version"]) == ("newer", 7)


async def test_quotes_come_from_the_originals_current_state_outside_the_page(
        res: Resources, settings: Settings, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    await send(res.redis, res.keys, settings, rid, owner, "the question " + "x" * 200)
    await send(res.redis, res.keys, settings, rid, owner, "second")
    await send(res.redis, res.keys, settings, rid, member, "reply one", reply_to=1)
    await send(res.redis, res.keys, settings, rid, member, "reply two", reply_to=2)
    await move_to_db(res.redis, res.keys, settings, rid, 3)  # seq 4 stays in the stream
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="a better question")
    await lifecycle.delete_message(res, room_id=rid, seq=2, user_id=owner)
    items, more = await page(res, rid, limit=2)  # the originals are outside this page
    assert more and [m["seq"] for m in items] == [3, 4]
    assert items[0]["reply_to"] == {"seq": 1, "sender_id": owner, "excerpt": "a better question", "deleted": False}
    assert items[1]["reply_to"] == {"seq": 2, "sender_id": owner, "excerpt": "", "deleted": True}
    # The excerpt is cut at REPLY_EXCERPT_CHARS.
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="y" * 300)
    got = await messages.get_message(redis=res.redis, keys=res.keys, settings=settings, room_id=rid, seq=3)
    assert got is not None and got["reply_to"]["excerpt"] == "y" * settings.reply_excerpt_chars


async def test_changes_since_merges_redis_and_postgresql_by_version(res: Resources, settings: Settings,
                                                                    room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    for i in range(1, 21):
        await send(res.redis, res.keys, settings, rid, owner, f"m{i}")
    await lifecycle.edit_message(res, room_id=rid, seq=3, user_id=owner, body="v1")          # version 1
    await lifecycle.edit_message(res, room_id=rid, seq=5, user_id=owner, body="v2")          # 2
    await lifecycle.react(res, room_id=rid, seq=7, user_id=member, emoji="👀", add=True)     # 3
    await lifecycle.edit_message(res, room_id=rid, seq=8, user_id=owner, body="v4")          # 4
    await move_to_db(res.redis, res.keys, settings, rid, 20)
    assert await res.redis.zcard(res.keys.room_changed(rid)) == 0  # versions 1-4 only in PostgreSQL
    await lifecycle.edit_message(res, room_id=rid, seq=3, user_id=owner, body="v5")          # 5, over a row at 1
    await lifecycle.edit_message(res, room_id=rid, seq=5, user_id=owner, body="v6")          # 6, over a row at 2
    await lifecycle.delete_message(res, room_id=rid, seq=12, user_id=owner)                 # 7
    await send(res.redis, res.keys, settings, rid, owner, "new")                            # seq 21
    await lifecycle.edit_message(res, room_id=rid, seq=21, user_id=owner, body="new!")       # 8, past max_seq

    items, more, last = await changes(res, rid, 0, 20, 50, viewer=member)
    assert not more and last == 8
    assert [(m["seq"], m["version"]) for m in items] == [(7, 3), (8, 4), (3, 5), (5, 6), (12, 7)]
    assert items[0]["reactions"] == [{"emoji": "👀", "count": 1, "user_ids": [member], "me": True}]
    assert items[2]["body"] == "v5" and items[4]["deleted"] is True

    # Paging by version, two at a time: the rows whose newer change is in Redis (seqs 3 and 5 at
    # versions 1, 2) take no place of a page, so none of the flushed changes is skipped.
    seen: list[tuple[int, int]] = []
    after = 0
    while True:
        got, more, _ = await changes(res, rid, after, 20, 2)
        seen += [(m["seq"], m["version"]) for m in got]
        if not more:
            break
        after = got[-1]["version"]
    assert seen == [(7, 3), (8, 4), (3, 5), (5, 6), (12, 7)]
    assert (await changes(res, rid, 7, 20, 50))[:2] == ([], False)
    assert [m["seq"] for m in (await changes(res, rid, 0, 21, 50))[0]] == [7, 8, 3, 5, 12, 21]

    # The same answer once everything is in PostgreSQL.
    await move_to_db(res.redis, res.keys, settings, rid, 21)
    again, more, last = await changes(res, rid, 0, 20, 50, viewer=member)
    assert not more and last == 8 and again == items


async def test_changes_since_drops_nothing_when_stale_rows_fill_the_page(
        res: Resources, settings: Settings, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    for i in range(1, 6):
        await send(res.redis, res.keys, settings, rid, owner, f"m{i}")
    for seq in (1, 2, 3):
        await lifecycle.edit_message(res, room_id=rid, seq=seq, user_id=owner, body=f"first {seq}")  # 1-3
    await move_to_db(res.redis, res.keys, settings, rid, 5)
    for seq in (1, 2):
        await lifecycle.edit_message(res, room_id=rid, seq=seq, user_id=owner, body=f"second {seq}")  # 4, 5
    got, more, _ = await changes(res, rid, 0, 5, 1)
    assert [(m["seq"], m["version"]) for m in got] == [(3, 3)] and more
    got, more, _ = await changes(res, rid, 3, 5, 1)
    assert [(m["seq"], m["version"]) for m in got] == [(1, 4)] and more


async def test_the_overlay_applies_when_the_seq_counter_is_lost(res: Resources, settings: Settings,
                                                                room: tuple[str, str, str]) -> None:
    # Without the counter the script cannot place the newest page's window: the overlay of the
    # page's seqs is read in a second step, and the change still shows.
    rid, owner, _ = room
    for i in range(1, 4):
        await send(res.redis, res.keys, settings, rid, owner, f"m{i}")
    await lifecycle.edit_message(res, room_id=rid, seq=2, user_id=owner, body="edited")
    await res.redis.delete(res.keys.room_seq(rid))
    items, _ = await page(res, rid)
    assert [m["body"] for m in items] == ["m1", "edited", "m3"]
