"""Edits, deletes, reactions (app/lifecycle.py) and the send side of replies, mentions and the
sender's read marker (app/messages.accept_message), on the real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from tortoise import connections

from app import lifecycle, rooms
from app.errors import (Conflict, Forbidden, MessageDeleted, MessageNotFound, NotMember, RateLimited, ReactionLimit,
                        RoomNotFound, ValidationFailed)
from app.realtime import events
from app.resources import Resources
from app.schemas import file_out
from app.serialize import loads
from app.settings import Settings
from app.store.keys import Keys
from models.file import File
from models.room import Membership
from models.user import User
from tests.app.test_messages import move_to_db, new_room, new_user, send


async def username(user_id: str) -> str:
    return (await User.get(id=user_id)).username_lower


async def updates(feed: PubSub, room_id: str, seconds: float = 0.3) -> list[dict[str, Any]]:
    """The message_updated frames published to the room (what every member's socket gets)."""
    out = []
    while (m := await feed.get_message(timeout=seconds)) is not None:
        route, exclude, frame = events.decode(m["data"])
        if route == f"r:{room_id}" and frame.startswith('{"type":"message_updated"'):
            assert exclude == ""  # the actor's own connections get it too
            out.append(loads(frame))
    return out


def stored(msg: dict[str, Any]) -> dict[str, Any]:
    """A rendered message without the viewer's `me` marks (the form events carry)."""
    return {**msg, "reactions": [{k: v for k, v in r.items() if k != "me"} for r in msg["reactions"]]}


# -- edits, deletes, reactions on a cached message ------------------------------------------

async def test_edit_react_delete_a_cached_message(redis: Redis, keys: Keys, settings: Settings, res: Resources,
                                                  room: tuple[str, str, str], feed: PubSub) -> None:
    rid, owner, member = room
    sent, _ = await send(redis, keys, settings, rid, owner, "first draft")
    edited = await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="second @draft")
    assert (edited["body"], edited["version"], edited["mentions"], edited["deleted"]) == \
        ("second @draft", 1, ["draft"], False)
    assert edited["edited_at"] >= sent["created_at"] and edited["created_at"] == sent["created_at"]
    assert edited["id"] == sent["id"] and edited["client_id"] is None and edited["reactions"] == []

    liked = await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="👍", add=True)
    assert liked["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [member], "me": True}]
    assert liked["version"] == 2 and liked["body"] == "second @draft"
    mine = await lifecycle.react(res, room_id=rid, seq=1, user_id=owner, emoji="👍", add=True)
    assert mine["reactions"] == [{"emoji": "👍", "count": 2, "user_ids": [member, owner], "me": True}]

    tomb = await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner)
    assert (tomb["deleted"], tomb["body"], tomb["file"], tomb["reply_to"], tomb["mentions"], tomb["reactions"],
            tomb["version"]) == (True, "", None, None, [], [], 4)
    assert tomb["edited_at"] == edited["edited_at"] and tomb["seq"] == 1 and tomb["sender_id"] == owner

    frames = await updates(feed, rid)
    assert [(f["change"], f["message"]["version"]) for f in frames] == \
        [("edit", 1), ("reaction", 2), ("reaction", 3), ("delete", 4)]
    assert all(f["room_id"] == rid for f in frames)
    # the event is the stored form: the same message for every member, no `me`
    assert frames[1]["message"] == {**stored(liked), "mentions": ["draft"]}
    assert not any("me" in r for f in frames for r in f["message"].get("reactions", ()))
    assert frames[3]["message"]["deleted"] is True
    # the flush's to-do: the message's latest state at its latest version
    assert await redis.zrange(keys.room_changed(rid), 0, -1, withscores=True) == [("1", 4.0)]
    assert loads(await redis.hget(keys.room_state(rid), "1"))["deleted"] is True
    assert int(await redis.get(keys.room_seq(rid))) == 1  # changes never take a seq


async def test_a_deleted_message_refuses_edits_and_reactions_and_deletes_again_as_a_no_op(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str],
        feed: PubSub) -> None:
    rid, owner, member = room
    await send(redis, keys, settings, rid, owner, "oops")
    tomb = await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner)
    assert await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner) == tomb
    with pytest.raises(MessageDeleted) as info:
        await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="fixed")
    assert (info.value.status, info.value.code) == (409, "message_deleted")
    with pytest.raises(MessageDeleted):
        await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="👍", add=True)
    assert [f["change"] for f in await updates(feed, rid)] == ["delete"]
    assert await redis.get(keys.room_version(rid)) == "1"


async def test_a_file_messages_tombstone_drops_the_file(redis: Redis, keys: Keys, settings: Settings,
                                                        res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    f = await File.create(room_id=rid, uploader_id=owner, name="plan.pdf", mime="application/pdf", size=10,
                          status="ready")
    await send(redis, keys, settings, rid, owner, "", kind="file", file=file_out(f), rate_limit=False)
    with pytest.raises(Forbidden) as info:
        await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="caption")
    assert info.value.details["reason"] == "not_editable"
    tomb = await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner)
    assert tomb["file"] is None and tomb["kind"] == "file" and tomb["deleted"] is True


# -- the NEED_BASE path: a message only PostgreSQL still holds ---------------------------------

async def test_changes_to_a_flushed_and_trimmed_message_start_from_its_row(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str],
        feed: PubSub) -> None:
    rid, owner, member = room
    for i in range(3):
        await send(redis, keys, settings, rid, owner, f"m{i} @{await username(member)}")
    await move_to_db(redis, keys, settings, rid, 3)  # CACHE_TAIL=0: the stream is empty now
    assert await redis.xlen(keys.room_log(rid)) == 0
    liked = await lifecycle.react(res, room_id=rid, seq=2, user_id=member, emoji="🎉", add=True)
    assert (liked["seq"], liked["body"], liked["version"]) == (2, f"m1 @{await username(member)}", 1)
    assert liked["reactions"] == [{"emoji": "🎉", "count": 1, "user_ids": [member], "me": True}]
    # the overlay holds it now: the next change builds on it, not on the (older) row
    again = await lifecycle.react(res, room_id=rid, seq=2, user_id=owner, emoji="🎉", add=True)
    assert again["reactions"][0]["user_ids"] == [member, owner] and again["version"] == 2
    edited = await lifecycle.edit_message(res, room_id=rid, seq=3, user_id=owner, body="rewritten")
    assert edited["body"] == "rewritten" and edited["mentions"] == [] and edited["version"] == 3
    tomb = await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner)
    assert tomb["deleted"] and tomb["version"] == 4
    assert [f["message"]["seq"] for f in await updates(feed, rid)] == [2, 2, 3, 1]
    with pytest.raises(MessageNotFound):
        await lifecycle.react(res, room_id=rid, seq=4, user_id=owner, emoji="🎉", add=True)


async def test_a_change_after_the_changes_flush_builds_on_the_row_it_wrote(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str]) -> None:
    from app import flush
    from app.db import raw_pool

    rid, owner, member = room
    await send(redis, keys, settings, rid, owner, "first")
    await send(redis, keys, settings, rid, owner, "second")
    await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="👍", add=True)
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="first, edited")
    await lifecycle.delete_message(res, room_id=rid, seq=2, user_id=owner)
    await flush.flush_room(rid, redis=redis, keys=keys, settings=settings.replace(cache_tail=0), pool=raw_pool())
    assert not await redis.xlen(keys.room_log(rid))
    assert not await redis.hlen(keys.room_state(rid))  # the overlay went with the flush
    got = await lifecycle.react(res, room_id=rid, seq=1, user_id=owner, emoji="👍", add=True)
    assert got["reactions"] == [{"emoji": "👍", "count": 2, "user_ids": [member, owner], "me": True}]
    assert (got["body"], got["version"]) == ("first, edited", 4) and got["edited_at"] is not None
    # the deleted one stays deleted, whether changed or replied to
    with pytest.raises(MessageDeleted):
        await lifecycle.react(res, room_id=rid, seq=2, user_id=owner, emoji="👍", add=True)
    with pytest.raises(ValidationFailed):
        await send(redis, keys, settings, rid, member, "to what?", reply_to=2)
    reply, _ = await send(redis, keys, settings, rid, member, "to this", reply_to=1)
    assert reply["reply_to"] == {"seq": 1, "sender_id": owner, "excerpt": "first, edited", "deleted": False}


async def test_lost_member_set_and_counters_are_rebuilt_from_postgres(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    await send(redis, keys, settings, rid, owner, "hello")
    await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="a", add=True)
    # the version counter of a room PostgreSQL says reached 41 (flushed changes) is lost with
    # the member set and the seq counter: the next change continues after PostgreSQL's
    await connections.get("default").execute_query("UPDATE rooms SET last_version = 41 WHERE id = $1", [rid])
    await redis.delete(keys.room_version(rid), keys.room_changed(rid), keys.room_members(rid), keys.room_seq(rid))
    got = await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="b", add=True)
    assert got["version"] == 42 and [r["emoji"] for r in got["reactions"]] == ["a", "b"]
    assert await redis.get(keys.room_seq(rid)) == "1"
    await redis.delete(keys.room_members(rid))
    with pytest.raises(NotMember):
        await lifecycle.react(res, room_id=rid, seq=1, user_id=await new_user(), emoji="a", add=True)


# -- permissions ------------------------------------------------------------------------------

async def test_only_the_sender_edits_and_only_the_sender_or_a_moderator_deletes(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    admin = await new_user()
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=admin)
    await Membership.filter(room_id=rid, user_id=admin).update(role="admin")
    for i in range(4):
        await send(redis, keys, settings, rid, member if i < 3 else owner, f"m{i}")
    with pytest.raises(Forbidden) as info:
        await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="not yours")
    assert (info.value.status, info.value.code, info.value.details["reason"]) == (403, "forbidden", "not_sender")
    with pytest.raises(Forbidden) as info:
        await lifecycle.delete_message(res, room_id=rid, seq=4, user_id=member)  # the owner's
    assert info.value.details["reason"] == "not_sender"
    assert int(await redis.get(keys.room_version(rid)) or 0) == 0  # refusals take no version
    assert (await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=admin))["deleted"]
    assert (await lifecycle.delete_message(res, room_id=rid, seq=2, user_id=owner))["deleted"]
    assert (await lifecycle.delete_message(res, room_id=rid, seq=3, user_id=member))["deleted"]
    # an admin demoted (in PostgreSQL) is refused again
    await Membership.filter(room_id=rid, user_id=admin).update(role="member")
    with pytest.raises(Forbidden):
        await lifecycle.delete_message(res, room_id=rid, seq=4, user_id=admin)


async def test_outsiders_and_missing_messages(redis: Redis, keys: Keys, settings: Settings, res: Resources,
                                              room: tuple[str, str, str]) -> None:
    rid, owner, _ = room
    private = await new_room(redis, keys, owner, is_private=True)
    await send(redis, keys, settings, rid, owner, "public")
    await send(redis, keys, settings, private, owner, "secret")
    outsider = await new_user()
    with pytest.raises(NotMember):
        await lifecycle.react(res, room_id=rid, seq=1, user_id=outsider, emoji="👍", add=True)
    with pytest.raises(RoomNotFound):
        await lifecycle.delete_message(res, room_id=private, seq=1, user_id=outsider)
    with pytest.raises(RoomNotFound):
        await lifecycle.delete_message(res, room_id=str(uuid.uuid4()), seq=1, user_id=owner)
    with pytest.raises(RoomNotFound):
        await lifecycle.delete_message(res, room_id="nope", seq=1, user_id=owner)
    for seq in (0, 2, -1, 2**63):
        with pytest.raises(MessageNotFound):
            await lifecycle.delete_message(res, room_id=rid, seq=seq, user_id=owner)


@pytest.mark.parametrize("body,reason", [("", "must not be empty"), ("  \n", "must not be empty"),
                                         ("x" * 4001, "at most"), (7, "string"), (None, "string"),
                                         ("a\x00b", "NUL")])
async def test_edit_bodies_are_checked_like_sends(redis: Redis, keys: Keys, settings: Settings, res: Resources,
                                                  room: tuple[str, str, str], body: Any, reason: str) -> None:
    rid, owner, _ = room
    await send(redis, keys, settings, rid, owner, "original")
    with pytest.raises(ValidationFailed) as info:
        await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body=body)
    assert reason in info.value.details["fields"]["body"]


@pytest.mark.parametrize("emoji", ["", "x" * 33, " ", "a b", "👍\n", "\x00", "\u200b\t", 5, None])
def test_bad_emoji_are_refused(emoji: Any) -> None:
    with pytest.raises(ValidationFailed) as info:
        lifecycle.validate_emoji(emoji)
    assert "emoji" in info.value.details["fields"]


@pytest.mark.parametrize("emoji", ["👍", "👨‍👩‍👧‍👦", "👍🏽", ":party_parrot:", "+1", "x" * 32])
def test_emoji_sequences_and_shortcodes_are_accepted(emoji: str) -> None:
    assert lifecycle.validate_emoji(emoji) == emoji


# -- reactions: idempotency, cap, rate limit, concurrency --------------------------------------

async def test_repeated_reactions_are_no_ops_without_a_version_or_an_event(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str],
        feed: PubSub) -> None:
    rid, owner, member = room
    await send(redis, keys, settings, rid, owner, "vote")
    first = await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="👍", add=True)
    again = await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="👍", add=True)
    assert again == first and again["version"] == 1
    gone = await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="👍", add=False)
    assert gone["reactions"] == [] and gone["version"] == 2
    assert await lifecycle.react(res, room_id=rid, seq=1, user_id=member, emoji="👍", add=False) == gone
    assert await lifecycle.react(res, room_id=rid, seq=1, user_id=owner, emoji="❤", add=False) == \
        {**gone, "reactions": []}
    assert [f["message"]["version"] for f in await updates(feed, rid)] == [1, 2]
    assert await redis.get(keys.room_version(rid)) == "2"


async def test_distinct_emoji_are_capped(redis: Redis, keys: Keys, settings: Settings, res: Resources,
                                         room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    capped = res.with_settings(settings.replace(reactions_max_emoji=2))
    await send(redis, keys, settings, rid, owner, "pick")
    await lifecycle.react(capped, room_id=rid, seq=1, user_id=owner, emoji="a", add=True)
    await lifecycle.react(capped, room_id=rid, seq=1, user_id=owner, emoji="b", add=True)
    with pytest.raises(ReactionLimit) as info:
        await lifecycle.react(capped, room_id=rid, seq=1, user_id=member, emoji="c", add=True)
    assert (info.value.status, info.value.code, info.value.details["max"]) == (409, "reaction_limit", 2)
    got = await lifecycle.react(capped, room_id=rid, seq=1, user_id=member, emoji="b", add=True)  # existing: fine
    assert [(r["emoji"], r["count"]) for r in got["reactions"]] == [("a", 1), ("b", 2)]


async def test_changes_are_rate_limited_per_user(redis: Redis, keys: Keys, settings: Settings, res: Resources,
                                                 room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    tight = res.with_settings(settings.replace(rate_changes=3, rate_changes_window_s=60))
    await send(redis, keys, settings, rid, owner, "busy")
    await send(redis, keys, settings, rid, member, "mine")
    for emoji in "abc":
        await lifecycle.react(tight, room_id=rid, seq=1, user_id=member, emoji=emoji, add=True)
    # a no-op is not a change: it costs nothing
    await lifecycle.react(tight, room_id=rid, seq=1, user_id=member, emoji="a", add=True)
    with pytest.raises(RateLimited) as info:
        await lifecycle.react(tight, room_id=rid, seq=1, user_id=member, emoji="d", add=True)
    assert 1 <= info.value.details["retry_after"] <= 60
    with pytest.raises(RateLimited):
        await lifecycle.edit_message(tight, room_id=rid, seq=2, user_id=member, body="x")  # one budget
    # another user has their own budget
    assert (await lifecycle.react(tight, room_id=rid, seq=1, user_id=owner, emoji="d", add=True))["version"] == 4


async def test_concurrent_changes_get_gap_free_versions(redis: Redis, keys: Keys, settings: Settings,
                                                        res: Resources, room: tuple[str, str, str],
                                                        feed: PubSub) -> None:
    rid, owner, _ = room
    users = [await new_user() for _ in range(50)]
    for u in users:
        await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=u)
    await send(redis, keys, settings, rid, owner, "react to me")
    await send(redis, keys, settings, rid, owner, "or me")
    got = await asyncio.gather(*(lifecycle.react(res, room_id=rid, seq=1 + i % 2, user_id=u, emoji="👍", add=True)
                                 for i, u in enumerate(users)))
    assert sorted(m["version"] for m in got) == list(range(1, 51))
    frames = await updates(feed, rid)
    assert [f["message"]["version"] for f in frames] == list(range(1, 51))  # published in version order
    last = {f["message"]["seq"]: f["message"] for f in frames}
    assert {seq: m["reactions"][0]["count"] for seq, m in last.items()} == {1: 25, 2: 25}
    assert sorted(last[1]["reactions"][0]["user_ids"] + last[2]["reactions"][0]["user_ids"]) == sorted(users)


# -- direct mode ---------------------------------------------------------------------------------

async def test_direct_mode_refuses_changes_clearly_and_serves_replies(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    direct = settings.replace(write_mode="direct")
    await send(redis, keys, direct, rid, owner, "in the database")
    with pytest.raises(Conflict) as info:
        await lifecycle.react(res.with_settings(direct), room_id=rid, seq=1, user_id=member, emoji="👍", add=True)
    assert info.value.status == 409 and "direct mode" in info.value.message
    reply, _ = await send(redis, keys, direct, rid, member, f"yes @{await username(owner)}", reply_to=1)
    assert reply["reply_to"] == {"seq": 1, "sender_id": owner, "excerpt": "in the database", "deleted": False}
    rows = await connections.get("default").execute_query_dict(
        "SELECT reply_to, mentions FROM messages WHERE room_id = $1 AND seq = 2", [rid])
    assert rows == [{"reply_to": 1, "mentions": [await username(owner)]}]
    marker = await connections.get("default").execute_query_dict(
        "SELECT last_read_seq FROM memberships WHERE room_id = $1 AND user_id = $2", [rid, member])
    assert marker == [{"last_read_seq": 2}]


# -- the send side: replies, mentions, the sender's read marker ------------------------------------

async def test_replies_carry_a_quote_of_the_original(redis: Redis, keys: Keys, settings: Settings,
                                                     res: Resources, room: tuple[str, str, str],
                                                     feed: PubSub) -> None:
    rid, owner, member = room
    long = "x" * 150
    await send(redis, keys, settings, rid, owner, long)
    f = await File.create(room_id=rid, uploader_id=owner, name="photo.png", mime="image/png", size=10,
                          status="ready")
    await send(redis, keys, settings, rid, owner, "", kind="file", file=file_out(f), rate_limit=False)
    reply, _ = await send(redis, keys, settings, rid, member, "agreed", reply_to=1)
    assert reply["reply_to"] == {"seq": 1, "sender_id": owner, "excerpt": "x" * 120, "deleted": False}
    to_file, _ = await send(redis, keys, settings, rid, member, "nice", reply_to=2)
    assert to_file["reply_to"]["excerpt"] == "photo.png"
    # the live event carries the quote taken at send time
    while (m := await feed.get_message(timeout=0.3)) is not None:
        _, _, frame = events.decode(m["data"])
        if frame.startswith('{"type":"message"') and loads(frame)["message"]["seq"] == 3:
            assert loads(frame)["message"]["reply_to"] == reply["reply_to"]
            break
    else:
        raise AssertionError("the reply's message event was not published")
    # an original that is flushed and trimmed is quoted from PostgreSQL
    await move_to_db(redis, keys, settings, rid, 4)
    from_db, _ = await send(redis, keys, settings, rid, owner, "again", reply_to=3)
    assert from_db["reply_to"] == {"seq": 3, "sender_id": member, "excerpt": "agreed", "deleted": False}


async def test_replies_to_a_missing_or_deleted_message_are_refused(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    await send(redis, keys, settings, rid, owner, "soon gone")
    await lifecycle.delete_message(res, room_id=rid, seq=1, user_id=owner)
    for target in (1, 2, 0, "1", True):
        with pytest.raises(ValidationFailed) as info:
            await send(redis, keys, settings, rid, member, "to what?", reply_to=target)
        assert "reply_to" in info.value.details["fields"]
    assert await redis.get(keys.room_seq(rid)) == "1"  # refused sends take no seq
    # a stranger learns nothing about the room's messages: the member check answers first
    with pytest.raises(NotMember):
        await send(redis, keys, settings, rid, await new_user(), "hi", reply_to=99)


async def test_sending_records_mentions_and_reads_ones_own_message(
        redis: Redis, keys: Keys, settings: Settings, res: Resources, room: tuple[str, str, str]) -> None:
    rid, owner, member = room
    bob = await username(member)
    await send(redis, keys, settings, rid, owner, f"hey @{bob.upper()}, and @{bob} again, cc @nobody_here")
    await send(redis, keys, settings, rid, member, "ok")
    await send(redis, keys, settings, rid, None, "a system note", kind="system")
    await send(redis, keys, settings, rid, owner, f"@{bob} ping")
    assert await redis.hgetall(keys.room_reads(rid)) == {owner: "4", member: "2"}  # not moved by the system's
    assert await redis.smembers(keys.room_reads_dirty(rid)) == {owner, member}
    assert await redis.zrange(keys.room_mentions(rid, bob), 0, -1) == ["1", "4"]
    assert await redis.zrange(keys.room_mentions(rid, "nobody_here"), 0, -1) == ["1"]
    ttl = await redis.ttl(keys.room_mentions(rid, bob))
    assert settings.retention_days * 86400 - 60 < ttl <= settings.retention_days * 86400
    # an edit moves the mention; a delete drops it
    await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body="never mind")
    assert await redis.zrange(keys.room_mentions(rid, bob), 0, -1) == ["4"]
    await lifecycle.delete_message(res, room_id=rid, seq=4, user_id=owner)
    assert await redis.zrange(keys.room_mentions(rid, bob), 0, -1) == []
    edited = await lifecycle.edit_message(res, room_id=rid, seq=1, user_id=owner, body=f"actually @{bob}")
    assert edited["mentions"] == [bob] and await redis.zrange(keys.room_mentions(rid, bob), 0, -1) == ["1"]
