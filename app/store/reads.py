"""Read markers in Redis: the mark_read and read_state scripts' calls and result codes.

The scripts are app/store/lua/{mark_read,read_state}.lua. A room's `reads` hash holds each
member's last_read_seq (forward only), `rdirty` the members whose value PostgreSQL does not
hold yet (the flush writes them to memberships.last_read_seq), and `mnt:<username>` the
seqs of the messages mentioning that user after their marker (app/store/keys.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app.store import scripts
from app.store.keys import Keys

# Result codes of mark_read.lua (2, 3, 5 as the accept script's).
OK, MEMBERS_MISSING, NOT_MEMBER, SEQ_MISSING, NEED_FLOOR = 0, 2, 3, 5, 6


@dataclass(frozen=True)
class Marker:
    code: int
    last_read_seq: int = 0
    unread_count: int = 0
    mention_count: int = 0
    moved: bool = False


async def mark_read(redis: Redis, keys: Keys, *, room_id: str, user_id: str, username: str, seq: int,
                    event: Sequence[str], floor: int | None = None, answer: str = "") -> Marker:
    """Run mark_read.lua once. `event`: events.read_payload_parts(room_id, user_id); `floor`:
    the PostgreSQL marker, needed only when the script answered NEED_FLOOR; `answer`: '' or
    the first piece of read_payload_parts routed to one connection, published when nothing moved."""
    res = await scripts.MARK_READ(
        redis,
        [keys.room_members(room_id), keys.room_seq(room_id), keys.room_reads(room_id),
         keys.room_reads_dirty(room_id), keys.pending_set(room_id), keys.room_mentions(room_id, username)],
        [user_id, int(seq), "" if floor is None else int(floor), room_id, keys.user_channel(user_id), *event, answer])
    code = int(res[0])
    if code != OK:
        return Marker(code)
    return Marker(OK, int(res[1]), int(res[2]), int(res[3]), bool(int(res[4])))


@dataclass(frozen=True)
class RoomReadState:
    last_seq: int | None  # None: Redis lost the room's seq counter
    last_read_seq: int
    unread_count: int
    mention_count: int


async def read_states(redis: Redis, keys: Keys, *, user_id: str, username: str,
                      rooms: dict[str, int]) -> dict[str, RoomReadState]:
    """read_state.lua for each room (room_id -> PostgreSQL marker), pipelined: one round trip."""
    if not rooms:
        return {}
    ids = list(rooms)
    script = scripts.READ_STATE
    values: list[Any] = []
    for _ in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                script.queue(pipe, [keys.room_seq(rid), keys.room_reads(rid), keys.room_mentions(rid, username)],
                             [user_id, int(rooms[rid] or 0)])
            values = await pipe.execute(raise_on_error=False)
        if not any(isinstance(v, NoScriptError) for v in values):
            break
        await script.load(redis)  # Redis restarted or flushed its scripts: once more
    for v in values:
        if isinstance(v, Exception):
            raise v
    out: dict[str, RoomReadState] = {}
    for rid, (last, marker, unread, mentions) in zip(ids, values):
        last = int(last)
        out[rid] = RoomReadState(last if last >= 0 else None, int(marker), int(unread), int(mentions))
    return out
