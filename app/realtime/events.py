"""Publishing live events for fan-out (Zulip's send_event_on_commit, over Redis pub/sub).

Services call these after their transaction commits; never blueprints. Every
server process subscribes to one channel (`Keys.events_channel`) and delivers
to its own sockets (see `app/realtime/fanout.py`). A payload is

    "<route>|<exclude_conn>|<frame JSON>"

where route is one of
    r:<room_id>              deliver to the room's local connections
    u:<user_id>              deliver to the user's local connections
    j:<room_id>:<user_id>:<version>  attach the user's connections to the room, then deliver to the room
    l:<room_id>:<user_id>:<version>  deliver to the room (the user included), then detach the user
    d:<room_id>              deliver to the room, then forget the room
    f:<user_id>:<family_id>  close the user's connections opened with that login (4401: logged out)

The version is the change's membership version (app/store/member_sets.py): a process
ignores a join or leave older than the last one it applied for that user and room,
so a late join event cannot re-attach a user who was removed after it.

and exclude_conn is a connection id that must not get the frame (the sender of
a message, which gets an `ack` instead), "~<user_id>" (every connection of that
user, e.g. for typing), or empty. The frame is serialized once
here and sent as-is to every recipient.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from app.store.keys import Keys
from app.serialize import dumps


def encode(route: str, frame: dict[str, Any] | str, exclude_conn: str = "") -> str:
    text = frame if isinstance(frame, str) else dumps(frame)
    return f"{route}|{exclude_conn}|{text}"


def decode(payload: str) -> tuple[str, str, str]:
    """-> (route, exclude_conn, frame_json)."""
    route, exclude, frame = payload.split("|", 2)
    return route, exclude, frame


async def to_room(redis: Redis, keys: Keys, room_id: str, frame: dict[str, Any], exclude_conn: str = "") -> None:
    await redis.publish(keys.events_channel(), encode(f"r:{room_id}", frame, exclude_conn))


async def to_user(redis: Redis, keys: Keys, user_id: str, frame: dict[str, Any]) -> None:
    await redis.publish(keys.events_channel(), encode(f"u:{user_id}", frame))


async def member_joined(redis: Redis, keys: Keys, room_id: str, user_id: str, frame: dict[str, Any],
                        version: int = 0) -> None:
    await redis.publish(keys.events_channel(), encode(f"j:{room_id}:{user_id}:{version}", frame))


async def member_left(redis: Redis, keys: Keys, room_id: str, user_id: str, frame: dict[str, Any],
                      version: int = 0) -> None:
    await redis.publish(keys.events_channel(), encode(f"l:{room_id}:{user_id}:{version}", frame))


async def family_revoked(redis: Redis, keys: Keys, user_id: str, family_id: str) -> None:
    """A login ended (logout, or a refresh token reused): every process closes its sockets (4401)."""
    await redis.publish(keys.events_channel(), encode(f"f:{user_id}:{family_id}", {}))  # the close says it all


async def room_deleted(redis: Redis, keys: Keys, room_id: str) -> None:
    frame = {"type": "room_deleted", "room_id": room_id}
    await redis.publish(keys.events_channel(), encode(f"d:{room_id}", frame))
