"""Publishing live events for fan-out (Zulip's send_event_on_commit, over Redis pub/sub).

Services call these after their transaction commits; never blueprints. Every
server process subscribes to one channel (`Keys.events_channel`), or with FANOUT_CHANNELS=rooms
to the room and user channels its connections need, and delivers to its own sockets (see `app/realtime/fanout.py`). A payload is

    "<route>|<exclude_conn>|<frame JSON>"

where route is one of
    r:<room_id>              deliver to the room's local connections
    u:<user_id>              deliver to the user's local connections
    j:<room_id>:<user_id>:<version>  attach the user's connections to the room, then deliver to the room
    l:<room_id>:<user_id>:<version>  deliver to the room (the user included), then detach the user
    d:<room_id>              deliver to the room, then forget the room
    f:<user_id>:<family_id>  close the user's connections opened with that login (4401: logged out)

With FANOUT_CHANNELS=rooms (Keys.fanout_rooms) r: and d: go to the room's channel
(`Keys.room_channel`), u: and f: to the user's (`Keys.user_channel`), and a join or leave is two
events: j:/l: (with `:<room last_seq>` appended on j:) to the user's channel, which attaches or
detaches that user's connections and delivers the frame to them only, and
    J:<room_id>:<user_id>:<version>  / L:...  to the room's channel: deliver to the room's
                                     connections except that user's
so no connection gets the frame twice.

The version is the change's membership version (app/store/member_sets.py): a process
ignores a join or leave older than the last one it applied for that user and room,
so a late join event cannot re-attach a user who was removed after it.

and exclude_conn is a connection id that must not get the frame (the sender of
a message, which gets an `ack` instead), "~<user_id>" (every connection of that
user, e.g. for typing), "=<conn_id>" (on a u: route: that connection ONLY, e.g. the answer
to a `read` frame that moved nothing, which must stay behind the read events before it), or
empty. The frame is serialized once
here and sent as-is to every recipient.

This module is the only place that spells the format: the accept and re-sequence Lua
scripts get the text around a message from `message_payload_parts` (the message JSON is
built inside the script, so the script concatenates; it names no JSON field of the event),
and the connection finds the message inside a frame with `message_of_frame`.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from app.store.keys import Keys
from app.serialize import dumps


# A message event's frame is MESSAGE_HEAD + the message JSON + MESSAGE_TAIL: the message is
# spliced in as stored (never parsed and re-encoded), so every recipient gets the cached bytes.
MESSAGE_HEAD = '{"type":"message","message":'
MESSAGE_TAIL = "}"


def room_route(room_id: str) -> str:
    return f"r:{room_id}"


def encode(route: str, frame: dict[str, Any] | str, exclude_conn: str = "") -> str:
    """The pub/sub payload of one event; `frame` is a dict or its JSON text."""
    text = frame if isinstance(frame, str) else dumps(frame)
    return f"{route}|{exclude_conn}|{text}"


def decode(payload: str) -> tuple[str, str, str]:
    """-> (route, exclude_conn, frame_json)."""
    route, exclude, frame = payload.split("|", 2)
    return route, exclude, frame


def message_frame(message_json: str) -> str:
    """The `message` event's frame around a message's JSON."""
    return MESSAGE_HEAD + message_json + MESSAGE_TAIL


def message_payload_parts(room_id: str, exclude_conn: str = "") -> tuple[str, str]:
    """(prefix, suffix): prefix + message JSON + suffix is encode(room route, message_frame(json)),
    for a script that builds the message JSON itself."""
    return encode(room_route(room_id), MESSAGE_HEAD, exclude_conn), MESSAGE_TAIL


def message_payload(room_id: str, message_json: str, exclude_conn: str = "") -> str:
    """The payload of a `message` event to the room (direct mode publishes it from Python)."""
    return encode(room_route(room_id), message_frame(message_json), exclude_conn)


# -- message_updated (app/lifecycle.py: edits, deletes, reactions) ----------------------

CHANGE_KINDS = ("edit", "delete", "reaction")


def change_payload_parts(room_id: str, change_kind: str) -> tuple[str, str]:
    """(prefix, suffix) of a `message_updated` event to the whole room (the actor's connections
    too: there is no ack for a change): prefix + message JSON + suffix is
    encode(room route, {"type":"message_updated","room_id","change","message"}). The change
    script builds the new message JSON itself and only concatenates."""
    if change_kind not in CHANGE_KINDS:
        raise ValueError(f"unknown change kind {change_kind!r}")
    head = dumps({"type": "message_updated", "room_id": room_id, "change": change_kind})[:-1] + ',"message":'
    return encode(room_route(room_id), head), "}"


# -- read (app/reads.py: read markers) ----------------------------------------------------

def user_route(user_id: str) -> str:
    return f"u:{user_id}"


def read_payload_parts(room_id: str, user_id: str, exclude_conn: str = "") -> tuple[str, str, str, str]:
    """The pieces of a `read` event to every connection of the user, around its three numbers:
    p0 + last_read_seq + p1 + unread_count + p2 + mention_count + p3 is
    encode(user route, {"type":"read","room_id","last_read_seq","unread_count","mention_count"});
    the mark_read script fills the numbers in and names no field."""
    head = dumps({"type": "read", "room_id": room_id})[:-1] + ',"last_read_seq":'
    return encode(user_route(user_id), head, exclude_conn), ',"unread_count":', ',"mention_count":', "}"


def is_message_frame(frame_json: str) -> bool:
    return frame_json.startswith(MESSAGE_HEAD)


def message_of_frame(frame_json: str) -> str:
    """The message JSON inside a `message` frame (is_message_frame must hold)."""
    return frame_json[len(MESSAGE_HEAD):len(frame_json) - len(MESSAGE_TAIL)]


async def to_room(redis: Redis, keys: Keys, room_id: str, frame: dict[str, Any], exclude_conn: str = "") -> None:
    await redis.publish(keys.room_channel(room_id), encode(room_route(room_id), frame, exclude_conn))


async def to_user(redis: Redis, keys: Keys, user_id: str, frame: dict[str, Any], exclude_conn: str = "") -> None:
    await redis.publish(keys.user_channel(user_id), encode(f"u:{user_id}", frame, exclude_conn))


async def member_joined(redis: Redis, keys: Keys, room_id: str, user_id: str, frame: dict[str, Any],
                        version: int = 0, last_seq: int | None = None) -> None:
    """Global channel: one j: event. Per-room channels (FANOUT_CHANNELS=rooms): the user's copy
    (j:, with the room's `last_seq` at the join: a process that must first subscribe to the room
    catches up from there) attaches the user's connections and delivers the frame to them; the
    room's copy (J:) delivers it to the room's other connections. No connection gets both."""
    text = dumps(frame)
    route = f"j:{room_id}:{user_id}:{version}"
    if not keys.fanout_rooms:
        await redis.publish(keys.events_channel(), encode(route, text))
        return
    await redis.publish(keys.user_channel(user_id), encode(f"{route}:{'' if last_seq is None else last_seq}", text))
    await redis.publish(keys.room_channel(room_id), encode(f"J:{room_id}:{user_id}:{version}", text))


async def member_left(redis: Redis, keys: Keys, room_id: str, user_id: str, frame: dict[str, Any],
                      version: int = 0) -> None:
    """Like member_joined: l: to the user (deliver to their connections in the room, detach them),
    L: to the room (its other connections)."""
    text = dumps(frame)
    route = f"l:{room_id}:{user_id}:{version}"
    if not keys.fanout_rooms:
        await redis.publish(keys.events_channel(), encode(route, text))
        return
    await redis.publish(keys.user_channel(user_id), encode(route, text))
    await redis.publish(keys.room_channel(room_id), encode(f"L:{room_id}:{user_id}:{version}", text))


async def family_revoked(redis: Redis, keys: Keys, user_id: str, family_id: str) -> None:
    """A login ended (logout, or a refresh token reused): every process closes its sockets (4401)."""
    await redis.publish(keys.user_channel(user_id), encode(f"f:{user_id}:{family_id}", {}))  # the close says it all


async def room_deleted(redis: Redis, keys: Keys, room_id: str) -> None:
    frame = {"type": "room_deleted", "room_id": room_id}
    await redis.publish(keys.room_channel(room_id), encode(f"d:{room_id}", frame))
