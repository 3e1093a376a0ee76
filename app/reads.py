"""Read markers and the unread and mention counts (issue 12, docs/api.md "read markers").

A member's marker is the seq of the last message they have read, forward only, clamped to the
room's last seq. unread_count = last_seq - marker (O(1): seqs count the room's messages);
mention_count = the messages after the marker that @mention the member and are not deleted
(the room's `mnt:<username>` zset, pruned up to the marker on each move, and on delete/edit
by the change script).

Redis holds the live value (`reads` hash, app/store/reads.py); the flush copies moved
markers (`rdirty`) into memberships.last_read_seq. Every reader passes the PostgreSQL value
along, and the larger one wins: a lost `reads` hash heals from PostgreSQL, a marker not yet
flushed is never lost to it. Moving a marker touches PostgreSQL only to rebuild what Redis
lost (the member set, the seq counter, the user's marker). Direct mode
(CHAT_WRITE_MODE=direct) keeps markers and counts in PostgreSQL only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError
from tortoise import connections

from app import access
from app.errors import NotMember, RoomNotFound, ValidationFailed
from app.ids import is_bigint, parse_uuid
from app.realtime import events
from app.resources import Resources
from app.store import cache, changes, scripts
from app.store import reads as store

_ATTEMPTS = 4  # member set, seq counter and marker may each need one rebuild


async def username_of(user_id: str, username: str | None) -> str:
    """The lowercased username the mention keys use: the token's `usr` claim, else (tokens
    issued before it) one PostgreSQL lookup."""
    if username:
        return username.lower()
    rows = await connections.get("default").execute_query_dict(
        "SELECT username_lower FROM users WHERE id = $1", [user_id])
    return str(rows[0]["username_lower"]) if rows else ""


async def _pg_marker(room_id: str, user_id: str) -> int:
    rows = await connections.get("default").execute_query_dict(
        "SELECT last_read_seq FROM memberships WHERE room_id = $1 AND user_id = $2 AND NOT banned",
        [room_id, user_id])
    return int(rows[0]["last_read_seq"]) if rows else 0


async def _pg_max_seq(room_id: str) -> int:
    from app.messages import _pg_max_seq  # the seq seeding's one source of truth
    return await _pg_max_seq(room_id)


async def mark_read(res: Resources, *, room_id: str, user_id: str, username: str | None,
                    seq: int, conn_id: str = "") -> dict[str, Any]:
    """Move the user's marker in the room forward to `seq` (past the last message: to the last);
    -> {room_id, last_read_seq, unread_count, mention_count}, moved or not. When it moved,
    every connection of the user gets the `read` event (the same object plus "type").
    `conn_id`: the WebSocket connection that asked; when nothing moved it alone gets the
    event, through the same events channel, so it never overtakes a read event before it."""
    if not is_bigint(seq, 0):
        raise ValidationFailed({"seq": "must be a seq (0 to 2^63-1)"})
    rid = parse_uuid(room_id, RoomNotFound)
    name = await username_of(user_id, username)
    if res.settings.write_mode == "direct":
        return await _mark_read_direct(res, rid, user_id, name, int(seq), conn_id)
    redis, keys = res.redis, res.keys
    event = events.read_payload_parts(rid, user_id)
    # The asking connection's answer when nothing moves: published by the script itself.
    answer = events.read_payload_parts(rid, user_id, "=" + conn_id)[0] if conn_id else ""
    floor: int | None = None
    for _ in range(_ATTEMPTS):
        got = await store.mark_read(redis, keys, room_id=rid, user_id=user_id, username=name, seq=int(seq),
                                    event=event, floor=floor, answer=answer)
        if got.code == store.OK:
            return {"room_id": rid, "last_read_seq": got.last_read_seq, "unread_count": got.unread_count,
                    "mention_count": got.mention_count}
        if got.code == store.MEMBERS_MISSING:
            await access.rebuild_members(redis, keys, rid)
        elif got.code == store.NOT_MEMBER:
            await access.check_member(redis, keys, rid, user_id)  # raises, or heals a stale set
        elif got.code == store.SEQ_MISSING:
            await cache.seed_seq(redis, keys, rid, await _pg_max_seq(rid))
        elif got.code == store.NEED_FLOOR:
            floor = await _pg_marker(rid, user_id)
    raise RoomNotFound()  # the room vanished while we were rebuilding its cache


async def _mark_read_direct(res: Resources, room_id: str, user_id: str, name: str, seq: int,
                            conn_id: str = "") -> dict[str, Any]:
    # The subquery reads the row as it was before this UPDATE (one snapshot): "moved" is exact.
    rows = await connections.get("default").execute_query_dict(
        "UPDATE memberships m SET last_read_seq = GREATEST(m.last_read_seq, LEAST($3::bigint, r.last_seq))"
        " FROM rooms r WHERE r.id = $1 AND m.room_id = $1 AND m.user_id = $2 AND NOT m.banned"
        " RETURNING m.last_read_seq AS marker, r.last_seq AS last,"
        " (SELECT last_read_seq FROM memberships WHERE room_id = $1 AND user_id = $2) AS before",
        [room_id, user_id, seq])
    if not rows:
        from app import rooms
        await rooms.require_member(room_id=room_id, user_id=user_id)
        raise NotMember()
    marker, last = int(rows[0]["marker"]), int(rows[0]["last"])
    state = {"room_id": room_id, "last_read_seq": marker, "unread_count": max(last - marker, 0),
             "mention_count": await _pg_mentions(room_id, name, marker)}
    if marker > int(rows[0]["before"]):
        await events.to_user(res.redis, res.keys, user_id, {"type": "read", **state})
    elif conn_id:
        await events.to_user(res.redis, res.keys, user_id, {"type": "read", **state}, "=" + conn_id)
    return state


async def _pg_mentions(room_id: str, name: str, marker: int) -> int:
    if not name:
        return 0
    rows = await connections.get("default").execute_query_dict(
        "SELECT count(*) AS n FROM messages WHERE room_id = $1 AND seq > $2 AND NOT deleted"
        " AND mentions @> ARRAY[$3::text]", [room_id, marker, name])
    return int(rows[0]["n"])


async def read_states(res: Resources, *, user_id: str, username: str | None,
                      rooms: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per room (room_id -> the PostgreSQL marker, memberships.last_read_seq): {last_read_seq,
    unread_count, mention_count, last_seq}. One pipelined Redis round trip for all rooms; a
    room whose seq counter Redis lost gets it re-seeded (as a send would) and is read again."""
    if not rooms:
        return {}
    name = await username_of(user_id, username)
    if res.settings.write_mode == "direct":
        return await _read_states_direct(list(rooms), name, rooms)
    redis, keys = res.redis, res.keys
    got = await store.read_states(redis, keys, user_id=user_id, username=name, rooms=rooms)
    lost = [rid for rid, st in got.items() if st.last_seq is None]
    if lost:
        for rid in lost:
            await cache.seed_seq(redis, keys, rid, await _pg_max_seq(rid))
        got.update(await store.read_states(redis, keys, user_id=user_id, username=name,
                                           rooms={rid: rooms[rid] for rid in lost}))
    return {rid: {"last_read_seq": st.last_read_seq, "unread_count": st.unread_count,
                  "mention_count": st.mention_count, "last_seq": st.last_seq or 0} for rid, st in got.items()}


async def _read_states_direct(ids: list[str], name: str, markers: dict[str, int]) -> dict[str, dict[str, Any]]:
    rows = await connections.get("default").execute_query_dict(
        "SELECT r.id, r.last_seq, r.last_version,"
        " (SELECT count(*) FROM messages m WHERE m.room_id = r.id AND m.seq > t.marker AND NOT m.deleted"
        "  AND m.mentions @> ARRAY[$3::text]) AS mentions"
        " FROM rooms r JOIN unnest($1::uuid[], $2::bigint[]) AS t(id, marker) ON t.id = r.id",
        [ids, [int(markers[i] or 0) for i in ids], name or "\x00"])
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        rid, last, marker = str(r["id"]), int(r["last_seq"]), int(markers[str(r["id"])] or 0)
        out[rid] = {"last_read_seq": marker, "unread_count": max(last - marker, 0),
                    "mention_count": int(r["mentions"]) if name else 0, "last_seq": last,
                    "last_version": int(r["last_version"])}
    return out


HELLO_STATE = scripts.SCRIPTS["hello_state"]


async def _hello_states(res: Resources, user_id: str, name: str,
                        floors: dict[str, int | None]) -> dict[str, tuple[int, int, int, int, int]]:
    """hello_state.lua per room (room -> PostgreSQL marker, None = not read), pipelined: one
    round trip. -> room -> (last_seq, last_version, marker, unread, mentions), -1 = Redis lacks it."""
    ids, keys = list(floors), res.keys
    calls = [([keys.room_seq(rid), keys.room_version(rid), keys.room_reads(rid), keys.room_mentions(rid, name)],
              [user_id, "" if floors[rid] is None else int(floors[rid])]) for rid in ids]  # type: ignore[arg-type]
    if isinstance(res.redis, RedisCluster) or len(calls) == 1:
        # redis-py's cluster pipeline refuses EVALSHA: one call per room, all in flight at once
        # (each room's keys are one slot), so still one round trip of latency. One room: a
        # plain call, which costs redis-py less than a pipeline of one.
        values: list[Any] = list(await asyncio.gather(*(HELLO_STATE(res.redis, k, a) for k, a in calls)))
        return {rid: tuple(int(x) for x in v) for rid, v in zip(ids, values)}  # type: ignore[misc]
    for _ in range(2):
        async with res.redis.pipeline(transaction=False) as pipe:
            for k, a in calls:
                HELLO_STATE.queue(pipe, k, a)
            values = await pipe.execute(raise_on_error=False)
        if not any(isinstance(v, NoScriptError) for v in values):
            break
        await HELLO_STATE.load(res.redis)  # Redis restarted or flushed its scripts: once more
    for v in values:
        if isinstance(v, Exception):
            raise v
    return {rid: tuple(int(x) for x in v) for rid, v in zip(ids, values)}  # type: ignore[misc]


async def _pg_markers(user_id: str, room_ids: list[str]) -> dict[str, int]:
    rows = await connections.get("default").execute_query_dict(
        "SELECT room_id, last_read_seq FROM memberships WHERE user_id = $1 AND room_id = ANY($2::uuid[])"
        " AND NOT banned", [user_id, room_ids])
    return {str(r["room_id"]): int(r["last_read_seq"]) for r in rows}


async def hello_rooms(res: Resources, user_id: str, username: str | None, room_ids: list[str],
                      pg_markers: dict[str, int] | None) -> list[dict[str, Any]]:
    """The WebSocket hello's rooms, in `room_ids`' order: {room_id, last_seq, last_version,
    last_read_seq, unread_count, mention_count}. `pg_markers`: memberships.last_read_seq per
    room (a room missing there counts from marker 0), or None when the caller did not read
    PostgreSQL (the cached room list, app/rooms.connect_rooms): then Redis decides, and only the
    rooms whose marker, seq counter or change counter Redis lacks cost PostgreSQL reads."""
    if not room_ids:
        return []
    name = await username_of(user_id, username)
    if res.settings.write_mode == "direct":
        markers = pg_markers if pg_markers is not None else await _pg_markers(user_id, room_ids)
        direct = await _read_states_direct(room_ids, name, {rid: int(markers.get(rid, 0) or 0) for rid in room_ids})
        return [{"room_id": rid, **{k: direct[rid][k] for k in HELLO_FIELDS}} if rid in direct
                else _empty_hello(rid) for rid in room_ids]
    floors: dict[str, int | None] = {rid: (None if pg_markers is None else int(pg_markers.get(rid, 0) or 0))
                                     for rid in room_ids}
    got = await _hello_states(res, user_id, name, floors)
    # What Redis lacks: a marker (PostgreSQL's, for those rooms only), a seq or change counter
    # (re-seeded from PostgreSQL as a send or a change would); then those rooms once more.
    unknown = [rid for rid, st in got.items() if st[2] < 0]
    if unknown:
        found = await _pg_markers(user_id, unknown)
        for rid in unknown:
            floors[rid] = found.get(rid, 0)
    redo = set(unknown)
    for rid, st in got.items():
        if st[0] < 0:
            await cache.seed_seq(res.redis, res.keys, rid, await _pg_max_seq(rid))
            redo.add(rid)
        if st[1] < 0:
            from app.messages import _pg_max_version
            await changes.seed_version(res.redis, res.keys, rid, await _pg_max_version(rid))
            redo.add(rid)
    if redo:
        got.update(await _hello_states(res, user_id, name, {rid: floors[rid] for rid in room_ids if rid in redo}))
    out = []
    for rid in room_ids:
        last, version, marker, unread, mentions = got[rid]
        out.append({"room_id": rid, "last_seq": max(last, 0), "last_version": max(version, 0),
                    "last_read_seq": max(marker, 0), "unread_count": unread, "mention_count": mentions})
    return out


HELLO_FIELDS = ("last_seq", "last_version", "last_read_seq", "unread_count", "mention_count")


def _empty_hello(room_id: str) -> dict[str, Any]:
    return {"room_id": room_id, **{k: 0 for k in HELLO_FIELDS}}


async def with_read_state(res: Resources, user_id: str, username: str | None,
                          rooms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rendered rooms (app.rooms.room_out dicts) with last_seq, last_version, last_read_seq,
    unread_count and mention_count added to those the user is a member of (GET /rooms,
    GET /rooms/{id}); other rooms are left as they are (public scope). Mutates and returns."""
    ids = [str(r["id"]) for r in rooms]
    if not ids:
        return rooms
    rows = await connections.get("default").execute_query_dict(
        "SELECT room_id, last_read_seq FROM memberships WHERE user_id = $1 AND room_id = ANY($2::uuid[])"
        " AND NOT banned", [user_id, ids])
    markers = {str(r["room_id"]): int(r["last_read_seq"]) for r in rows}
    mine = [rid for rid in ids if rid in markers]
    by_id = {s["room_id"]: s for s in await hello_rooms(res, user_id, username, mine, markers)}
    for r in rooms:
        st = by_id.get(str(r["id"]))
        if st is not None:
            r.update({k: v for k, v in st.items() if k != "room_id"})
    return rooms
