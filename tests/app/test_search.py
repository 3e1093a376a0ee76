"""Message search (app/search.py) at the service level, on the real Redis and PostgreSQL.

Messages are sent through the real accept path and moved with the real flush; changes are
made with the real change path (app/lifecycle.py), or, where a state is hard to reach that
way, written as the change script leaves it (the `state` overlay and `changed`) or as the
changes flush leaves PostgreSQL's row.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from tortoise import connections

from app import flush, lifecycle, rooms, search
from app.db import raw_pool
from app.errors import NotMember, RoomNotFound, ValidationFailed
from app.messages import accept_message
from app.pagination import ROOMS, encode_cursor
from app.resources import Resources
from app.rooms import CreateRoom
from app.serialize import dumps, utcnow
from app.settings import Settings
from models.user import User


def word() -> str:
    """A word no other message of the session contains (letters only: one lexeme)."""
    return "w" + "".join(chr(ord("a") + int(c, 16) % 26) for c in uuid.uuid4().hex[:12])


async def new_user() -> str:
    username = f"s{uuid.uuid4().hex[:10]}"
    user = await User.create(username=username, username_lower=username, display_name=username,
                             password_hash="not-a-hash")
    return str(user.id)


async def new_room(res: Resources, owner: str, **fields: Any) -> str:
    data = CreateRoom(name=f"room {uuid.uuid4().hex[:6]}", **fields)
    return (await rooms.create_room(redis=res.redis, keys=res.keys, owner_id=owner, data=data))["id"]


async def send(res: Resources, room_id: str, sender: str, body: str) -> dict[str, Any]:
    msg, _ = await accept_message(res, room_id=room_id, sender_id=sender, body=body, rate_limit=False)
    return msg


async def flush_all(res: Resources, room_id: str, cache_tail: int = 0) -> None:
    """The real flush of everything sent so far; cache_tail=0 trims it all from Redis."""
    s = res.settings.replace(cache_tail=cache_tail)
    result = await flush.flush_room(room_id, redis=res.redis, keys=res.keys, settings=s, pool=raw_pool(), max_run_s=0)
    assert not result.busy
    assert int(await res.redis.get(res.keys.room_flushed(room_id)) or 0) == int(await res.redis.get(res.keys.room_seq(room_id)))


async def pg_body(room_id: str, seq: int) -> str:
    rows = await connections.get("default").execute_query_dict(
        "SELECT body FROM messages WHERE room_id = $1 AND seq = $2", [room_id, seq])
    return str(rows[0]["body"])


async def pg_rows(room_id: str) -> int:
    rows = await connections.get("default").execute_query_dict(
        "SELECT count(*) AS n FROM messages WHERE room_id = $1", [room_id])
    return int(rows[0]["n"])


async def found(res: Resources, user: str, q: str, **kw: Any) -> list[tuple[str, int]]:
    page = await search.search(res, user_id=user, q=q, **kw)
    return [(i["room_id"], i["message"]["seq"]) for i in page["items"]]


@pytest.fixture
async def room(resources: Resources, db: None) -> tuple[str, str]:
    """(room_id, owner_id) of a fresh public room."""
    owner = await new_user()
    return await new_room(resources, owner), owner


# -- finding -----------------------------------------------------------------------------

async def test_a_message_just_sent_is_found_from_the_cache(resources: Resources, room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    await send(resources, room_id, owner, "unrelated")
    msg = await send(resources, room_id, owner, f"Lunch at the {w.upper()} place?")
    assert await pg_rows(room_id) == 0  # only Redis has it
    page = await search.search(resources, user_id=owner, q=w)
    assert page["next_cursor"] is None
    [item] = page["items"]
    assert item["room_id"] == room_id and item["message"]["seq"] == msg["seq"]
    assert item["message"]["body"] == msg["body"] and item["message"]["deleted"] is False
    assert item["message"]["reactions"] == [] and item["message"]["version"] == 0  # the API's view
    assert item["snippet"] == msg["body"]
    [[s, e]] = item["highlights"]
    assert item["snippet"][s:e] == w.upper()  # matched case-insensitively, highlighted as written
    assert item["rank"] > 0  # PostgreSQL's ts_rank of the cached body


async def test_a_message_flushed_long_ago_is_found_from_postgresql(resources: Resources,
                                                                   room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    old = await send(resources, room_id, owner, f"the {w} report is due")
    for i in range(5):
        await send(resources, room_id, owner, f"filler {i}")
    await flush_all(resources, room_id)  # CACHE_TAIL=0: nothing left in Redis
    assert await resources.redis.xlen(resources.keys.room_log(room_id)) == 0
    page = await search.search(resources, user_id=owner, q=f"report {w}")
    [item] = page["items"]
    assert item["message"]["seq"] == old["seq"] and item["message"]["id"] == old["id"]
    assert item["message"]["created_at"] == old["created_at"] and item["rank"] > 0
    assert [item["snippet"][s:e] for s, e in item["highlights"]] == [w, "report"]


async def test_a_message_in_both_redis_and_postgresql_is_found_once(resources: Resources,
                                                                    room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    for i in range(3):
        await send(resources, room_id, owner, f"{w} number {i}")
    await flush_all(resources, room_id, cache_tail=100)
    # As between a flush's commit and its `flushed` step: the entries are after `flushed` too.
    await resources.redis.set(resources.keys.room_flushed(room_id), 0)
    assert sorted(await found(resources, owner, w)) == [(room_id, 1), (room_id, 2), (room_id, 3)]


async def test_prefix_search_on_the_last_word_only(resources: Resources, room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    flushed = await send(resources, room_id, owner, f"{w}zebra stripes")
    await flush_all(resources, room_id)
    fresh = await send(resources, room_id, owner, f"{w}zebra stripes again")
    assert await found(resources, owner, f"{w}ze") == [(room_id, fresh["seq"]), (room_id, flushed["seq"])]
    assert len(await found(resources, owner, f"{w}zebra str")) == 2
    # a word before the last must be a whole word, in the cache and in PostgreSQL alike
    assert await found(resources, owner, f"{w}ze stripes") == []


# -- never found --------------------------------------------------------------------------

async def test_deleted_messages_are_never_found(resources: Resources, room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    kept = await send(resources, room_id, owner, f"{w} kept")
    flushed = await send(resources, room_id, owner, f"{w} deleted after its flush")
    await flush_all(resources, room_id)
    in_cache = await send(resources, room_id, owner, f"{w} deleted while cached")
    for msg in (flushed, in_cache):
        await lifecycle.delete_message(resources, room_id=room_id, seq=msg["seq"], user_id=owner)
    # PostgreSQL's row of `flushed` still has its body: the overlay's tombstone drops the hit
    assert await pg_body(room_id, flushed["seq"]) == flushed["body"]
    assert await found(resources, owner, w) == [(room_id, kept["seq"])]
    await flush_all(resources, room_id)  # the message and (once the changes flush runs) the tombstones
    assert await found(resources, owner, w) == [(room_id, kept["seq"])]
    # a row PostgreSQL holds as deleted is never found, even with its body still there
    await connections.get("default").execute_query(
        "UPDATE messages SET deleted = true WHERE room_id = $1 AND seq = $2", [room_id, kept["seq"]])
    assert await found(resources, owner, w) == []


async def test_a_tombstone_in_the_overlay_hides_a_flushed_row(resources: Resources, room: tuple[str, str]) -> None:
    """The overlay as the change script leaves it, written by hand: state + changed, PostgreSQL untouched."""
    room_id, owner = room
    w = word()
    msg = await send(resources, room_id, owner, f"{w} soon gone")
    await flush_all(resources, room_id)
    tombstone = {**msg, "deleted": True, "body": "", "file": None, "reply_to": None, "version": 1}
    await resources.redis.hset(resources.keys.room_state(room_id), str(msg["seq"]), dumps(tombstone))
    await resources.redis.zadd(resources.keys.room_changed(room_id), {str(msg["seq"]): 1})
    assert await found(resources, owner, w) == []


async def test_an_edited_message_is_found_by_its_new_body_not_its_old(resources: Resources,
                                                                      room: tuple[str, str]) -> None:
    room_id, owner = room
    old_w, new_w = word(), word()
    flushed = await send(resources, room_id, owner, f"{old_w} flushed")
    await flush_all(resources, room_id)
    cached = await send(resources, room_id, owner, f"{old_w} cached")
    for msg in (flushed, cached):
        await lifecycle.edit_message(resources, room_id=room_id, seq=msg["seq"], user_id=owner,
                                     body=f"{new_w} now, edited {msg['seq']}")
    assert await found(resources, owner, old_w) == []
    page = await search.search(resources, user_id=owner, q=new_w)
    assert [(i["message"]["seq"], i["message"]["body"], i["snippet"]) for i in page["items"]] == [
        (cached["seq"], f"{new_w} now, edited 2", f"{new_w} now, edited 2"),
        (flushed["seq"], f"{new_w} now, edited 1", f"{new_w} now, edited 1")]
    assert all(i["message"]["version"] > 0 and i["message"]["edited_at"] for i in page["items"])
    await flush_all(resources, room_id)
    assert await found(resources, owner, new_w) == [(room_id, cached["seq"]), (room_id, flushed["seq"])]
    assert await found(resources, owner, old_w) == []


async def test_a_reply_found_shows_its_quote_as_the_original_is_now(resources: Resources,
                                                                     room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    original = await send(resources, room_id, owner, "the original text")
    old_reply, _ = await accept_message(resources, room_id=room_id, sender_id=owner, body=f"{w} old reply",
                                        reply_to=original["seq"], rate_limit=False)
    await flush_all(resources, room_id)  # PostgreSQL's row holds only the seq it answers
    new_reply, _ = await accept_message(resources, room_id=room_id, sender_id=owner, body=f"{w} new reply",
                                        reply_to=original["seq"], rate_limit=False)
    quote = {"seq": original["seq"], "sender_id": owner, "excerpt": "the original text", "deleted": False}
    page = await search.search(resources, user_id=owner, q=w)
    assert [i["message"]["reply_to"] for i in page["items"]] == [quote, quote]
    await lifecycle.delete_message(resources, room_id=room_id, seq=original["seq"], user_id=owner)
    page = await search.search(resources, user_id=owner, q=w)
    gone = {**quote, "excerpt": "", "deleted": True}
    assert [(i["message"]["seq"], i["message"]["reply_to"]) for i in page["items"]] == [
        (new_reply["seq"], gone), (old_reply["seq"], gone)]


async def test_a_private_room_the_caller_is_not_in_never_leaks(resources: Resources, db: None) -> None:
    w = word()
    insider, outsider = await new_user(), await new_user()
    private = await new_room(resources, insider, is_private=True)
    public = await new_room(resources, insider)
    mine = await new_room(resources, outsider)
    await send(resources, private, insider, f"{w} secret plans")
    await send(resources, public, insider, f"{w} public but not joined")
    await send(resources, mine, outsider, "nothing to see")
    assert await found(resources, outsider, w) == []
    await flush_all(resources, private)
    await flush_all(resources, public)
    assert await found(resources, outsider, w) == []
    # asking for the room itself answers as history does: 404 private, 403 public
    with pytest.raises(RoomNotFound):
        await search.search(resources, user_id=outsider, q=w, room_id=private)
    with pytest.raises(NotMember):
        await search.search(resources, user_id=outsider, q=w, room_id=public)
    with pytest.raises(RoomNotFound):
        await search.search(resources, user_id=outsider, q=w, room_id=str(uuid.uuid4()))
    with pytest.raises(RoomNotFound):
        await search.search(resources, user_id=outsider, q=w, room_id="not-a-room")
    assert sorted(r for r, _ in await found(resources, insider, w)) == sorted([private, public])


async def test_a_banned_member_finds_nothing_of_that_room(resources: Resources, room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    member = await new_user()
    await rooms.join_room(redis=resources.redis, keys=resources.keys, room_id=room_id, user_id=member)
    await send(resources, room_id, owner, f"{w} before the ban")
    assert len(await found(resources, member, w)) == 1
    await connections.get("default").execute_query(
        "UPDATE memberships SET banned = true WHERE room_id = $1 AND user_id = $2", [room_id, member])
    assert await found(resources, member, w) == []


async def test_messages_past_retention_are_not_found(resources: Resources, room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    await send(resources, room_id, owner, f"{w} ancient")
    await flush_all(resources, room_id)
    await connections.get("default").execute_query(
        "UPDATE messages SET created_at = $2 WHERE room_id = $1",
        [room_id, utcnow() - timedelta(days=resources.settings.retention_days + 1)])
    assert await found(resources, owner, w) == []


# -- the room filter, odd queries, paging -------------------------------------------------

async def test_room_id_limits_the_search_to_that_room(resources: Resources, db: None) -> None:
    w = word()
    owner = await new_user()
    a, b = await new_room(resources, owner), await new_room(resources, owner)
    await send(resources, a, owner, f"{w} in a")
    await send(resources, b, owner, f"{w} in b")
    await flush_all(resources, b)
    assert sorted(r for r, _ in await found(resources, owner, w)) == sorted([a, b])
    assert await found(resources, owner, w, room_id=a) == [(a, 1)]
    assert await found(resources, owner, w, room_id=b) == [(b, 1)]


ODD = ["'", '"', "''", "\\", "\\'", "&|!:*", "foo:*", "a & b | !c", "(((", "')) OR 1=1 --", "<->", "a <-> b",
       "🎉", "🎉 party 🎉", "x" * 200, "日本語", "naïve café", "%_%", "$1", "\t\n x \r", "a:b:c", "'a'::tsquery",
       "ä" * 200, "𠀀" * 200, "\u200b", "0", "_", "foo_bar", "C:\\path\\x", "!", "*"]


@pytest.mark.parametrize("q", ODD)
async def test_odd_queries_answer_or_refuse_cleanly(resources: Resources, room: tuple[str, str], q: str) -> None:
    room_id, owner = room
    await send(resources, room_id, owner, "foo bar party x 0 naïve café 日本語")
    await flush_all(resources, room_id)
    try:
        page = await search.search(resources, user_id=owner, q=q)
    except ValidationFailed as err:  # only for a query without a word to search for
        assert "q" in err.details["fields"]
        assert not search.words(q)
    else:
        assert set(page) == {"items", "next_cursor"}


async def test_a_body_full_of_query_syntax_is_found_by_its_words(resources: Resources,
                                                                 room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    body = f"it's C:\\temp\\{w} & (more)! 'quoted' :* <-> 🎉"
    msg = await send(resources, room_id, owner, body)
    assert await found(resources, owner, f"'{w}' & (more") == [(room_id, msg["seq"])]
    await flush_all(resources, room_id)
    assert await found(resources, owner, f"temp\\{w}:* & more!") == [(room_id, msg["seq"])]


@pytest.mark.parametrize("q,reason", [("", "characters"), ("   ", "characters"), ("x" * 201, "characters"),
                                      ("🎉🎉", "word"), ("&|!", "word"), ("___", "word")])
async def test_a_query_without_a_word_is_422(resources: Resources, room: tuple[str, str], q: str,
                                             reason: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        await search.search(resources, user_id=room[1], q=q)
    assert reason in info.value.details["fields"]["q"]


async def test_paging_covers_every_hit_once_on_a_quiet_room(resources: Resources, room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    for i in range(7):
        await send(resources, room_id, owner, f"{w} {'x ' * i}old")
    await flush_all(resources, room_id)
    for i in range(4):
        await send(resources, room_id, owner, f"{w} new {i}")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await search.search(resources, user_id=owner, q=w, limit=3, cursor=cursor)
        assert len(page["items"]) <= 3
        seen += [i["message"]["seq"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 4 and sorted(seen) == list(range(1, 12)) and len(seen) == 11
    assert seen[:4] == [11, 10, 9, 8]  # cache hits first, newest first


@pytest.mark.parametrize("cursor", ["garbage", "e30", encode_cursor({"o": -1}), encode_cursor({"o": "1"}),
                                    encode_cursor({"o": 1, "x": 2}), "x" * 600,
                                    encode_cursor(ROOMS.position("2026-01-01T00:00:00+00:00", str(uuid.uuid4())))])
async def test_a_cursor_we_did_not_make_is_422(resources: Resources, room: tuple[str, str], cursor: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        await search.search(resources, user_id=room[1], q="anything", cursor=cursor)
    assert info.value.details["fields"] == {"cursor": "malformed cursor"}


async def test_limit_is_clamped_to_the_list_maximum(resources: Resources, room: tuple[str, str]) -> None:
    room_id, owner = room
    w = word()
    for i in range(205):
        await send(resources, room_id, owner, f"{w} {i}")
    page = await search.search(resources, user_id=owner, q=w, limit=10**6)
    assert len(page["items"]) == 200 and page["next_cursor"] is not None
    rest = await search.search(resources, user_id=owner, q=w, limit=10**6, cursor=page["next_cursor"])
    assert len(rest["items"]) == 5 and rest["next_cursor"] is None
    assert len(await found(resources, owner, w, limit=0)) == 1  # the route refuses 0; here it is 1


# -- snippets ------------------------------------------------------------------------------

def test_a_long_body_is_cut_around_the_first_match_at_whole_words(settings: Settings) -> None:
    query = search.parse_query(settings, "needle")
    body = " ".join(f"word{i}" for i in range(60)) + " the Needle here " + " ".join(f"tail{i}" for i in range(60))
    text, marks = search.snippet(body, query)
    assert text.startswith("…") and text.endswith("…")
    assert len(text) <= search.SNIPPET_CHARS + 2
    inner = text[1:-1]
    assert inner.split(" ")[0] in body.split(" ") and inner.split(" ")[-1] in body.split(" ")  # whole words
    assert [text[s:e] for s, e in marks] == ["Needle"]
    assert text.index("Needle") >= 30  # context before the match


def test_every_matching_word_of_the_snippet_is_highlighted(settings: Settings) -> None:
    query = search.parse_query(settings, "cat ca")
    text, marks = search.snippet("A cat,\n\n a CAT and a caterpillar 🐛 cat!", query)
    assert text == "A cat, a CAT and a caterpillar 🐛 cat!"
    assert [text[s:e] for s, e in marks] == ["cat", "CAT", "caterpillar", "cat"]
    short, marks = search.snippet("no match here", query)
    assert (short, marks) == ("no match here", [])
