"""This process's WebSocket connections by id, by user and by room: the LOCAL half of the fan-out.

Events reach every process through Redis pub/sub (app/realtime/fanout.py); each process
delivers to its own sockets from here (app/realtime/connection.py writes them). Joins and
leaves carry their membership version: the registry ignores one older than the
last it applied for that user and room (a late join cannot re-attach a user
removed after it, nor a join published after its room's deletion), and a
connection being set up skips the rooms whose membership changed while it read
them from PostgreSQL (`tick`, `attach_fresh`).

With FANOUT_CHANNELS=rooms the registry also tells the process's `Subscriptions`
(app/realtime/fanout.py) which channels it needs: a user's channel while the user has a
connection here, a room's channel while a connection here is attached to the room. A room
whose channel is subscribed only because a join event attached its user here catches up from
the room's stream (`CatchUp`): messages published before the subscription took effect are
delivered from there, later live duplicates dropped.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Iterable, Protocol

import orjson

from app.realtime.connection import Connection, Frame
from app.realtime.events import is_message_frame, message_frame, message_of_frame
from app.serialize import dumps

log = logging.getLogger("chat.ws")

RECENT_S = 300.0  # how long a join/leave version is remembered (a late event is late by ms, not minutes)


class Subscriptions(Protocol):
    """What the registry asks of the process's channel subscriptions (app/realtime/fanout.py's
    Subscriptions, which imports this module), FANOUT_CHANNELS=rooms only."""

    def need_user(self, user_id: str) -> None: ...
    def need_room(self, room_id: str) -> None: ...
    def release_user(self, user_id: str) -> None: ...
    def release_room(self, room_id: str) -> None: ...
    def room_live(self, room_id: str) -> bool: ...
    async def ready(self, user_id: str | None, room_ids: Iterable[str]) -> None: ...


class CatchUp:
    """A room whose channel is being subscribed after a join attached its user here.

    `from_seq`: the room's last seq at the join (the j: event carries it; None = unknown, no
    catch-up). Once subscribed (`fetching`), the room's live events wait in `buffer` until the
    room's stream has been read from from_seq + 1; then the stream's messages go out, followed
    by the buffered events minus the messages the stream already gave. Then (`floor` set) live
    messages up to the last seq the stream gave are still dropped: a message published between
    the confirmation and the stream read may have its live copy still unread on the subscriber
    connection; the first newer message ends that (a channel's events come in order).
    """

    __slots__ = ("from_seq", "fetching", "buffer", "floor")

    def __init__(self, from_seq: int | None) -> None:
        self.from_seq = from_seq
        self.fetching = False
        self.buffer: list[tuple[str, str]] = []  # (frame text, exclude) of live room events
        self.floor: int | None = None  # after the catch-up: live messages <= floor are duplicates


class Registry:
    """Local connections by id, by user and by room, and the membership versions applied."""

    def __init__(self) -> None:
        self.conns: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.by_room: dict[str, set[Connection]] = {}
        self.gen = 0  # fan-out generation: +1 each time the subscription comes back after a loss
        self.tick = 0  # membership events applied so far (a handshake notes it before reading PG)
        # (room, user) -> (version, tick, monotonic time) of the last join/leave applied;
        # (room, "*") marks a deleted room. Insertion-ordered, oldest first, pruned after RECENT_S.
        self._recent: dict[tuple[str, str], tuple[float, int, float]] = {}
        # FANOUT_CHANNELS=rooms only (None: the one global channel, nothing to manage)
        self.subs: Subscriptions | None = None
        self.catchups: dict[str, CatchUp] = {}  # room -> its catch-up while its channel is new
        # Token expiries: (loop time, connection id, close code, reason), earliest first, and one
        # timer for the earliest, instead of a TimerHandle per connection (~600 bytes each idle).
        self._expiries: list[tuple[float, str, int, str]] = []
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_when = 0.0

    def add(self, conn: Connection) -> None:
        self.conns[conn.id] = conn
        users = self.by_user.get(conn.user_id)
        if users is None:
            users = self.by_user[conn.user_id] = set()
            if self.subs is not None:
                self.subs.need_user(conn.user_id)
        users.add(conn)

    def remove(self, conn: Connection) -> None:
        self.conns.pop(conn.id, None)
        users = self.by_user.get(conn.user_id)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[conn.user_id]
                if self.subs is not None:
                    self.subs.release_user(conn.user_id)
        for room_id in conn.rooms:
            self._unlink(room_id, conn)
        conn.rooms.clear()

    def close_at(self, conn: Connection, delay_s: float, code: int, reason: str) -> None:
        """Close `conn` (`conn.close(code, reason)`) in `delay_s` unless it has gone by then."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay_s, 0.0)
        heap = self._expiries
        # Entries of connections that left wait for their time; rebuild when they dominate, so
        # a reconnecting crowd does not pile up a token lifetime's worth of them.
        if len(heap) > 2 * len(self.conns) + 1024:
            heap[:] = [e for e in heap if e[1] in self.conns]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, conn.id, code, reason))
        if self._expiry_timer is None or when < self._expiry_when:
            self._arm_expiry(loop)

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self._expiries:
            self._expiry_when = self._expiries[0][0]
            self._expiry_timer = loop.call_at(self._expiry_when, self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        loop = asyncio.get_running_loop()
        heap, now = self._expiries, loop.time()
        while heap and heap[0][0] <= now:
            _, conn_id, code, reason = heapq.heappop(heap)
            conn = self.conns.get(conn_id)
            if conn is not None:
                try:
                    conn.close(code, reason)
                except Exception:  # noqa: BLE001 - one broken socket must not stop the others' expiry
                    log.debug("expiry close of %s failed", conn_id, exc_info=True)
        self._arm_expiry(loop)

    def attach(self, conn: Connection, room_ids: Iterable[str]) -> None:
        by_room, subs = self.by_room, self.subs
        for room_id in room_ids:
            members = by_room.get(room_id)
            if members is None:
                members = by_room[room_id] = set()
                if subs is not None:
                    subs.need_room(room_id)
            members.add(conn)
            conn.rooms.add(room_id)

    async def subscribed(self, user_id: str | None = None, room_ids: Iterable[str] = ()) -> None:
        """FANOUT_CHANNELS=rooms: wait until this process's subscription to the user's channel and
        the rooms' channels is confirmed (bounded; a lost subscription ends in a resync anyway).
        Callers check `subs is not None` first: the global channel needs no wait."""
        if self.subs is not None:
            await self.subs.ready(user_id, room_ids)

    def attach_fresh(self, conn: Connection, room_ids: Iterable[str], since_tick: int) -> None:
        """Attach a new connection to the rooms PostgreSQL listed, except those whose membership
        changed since `since_tick` (noted before the read): that event already did the right thing."""
        user = conn.user_id
        self.attach(conn, [r for r in room_ids if not self.changed_since(r, user, since_tick)])

    def changed_since(self, room_id: str, user_id: str, since_tick: int) -> bool:
        for key in ((room_id, user_id), (room_id, "*")):
            entry = self._recent.get(key)
            if entry is not None and entry[1] > since_tick:
                return True
        return False

    def note_membership(self, room_id: str, user_id: str, version: float) -> bool:
        """Record a join/leave of `version`; False when it is stale (an equal or newer one, or
        the room's deletion, was applied). Version 0 (an old publisher) always applies."""
        if (room_id, "*") in self._recent:
            return False
        key = (room_id, user_id)
        prev = self._recent.pop(key, None)
        if prev is not None and version and prev[0] >= version:
            self._recent[key] = prev
            return False
        self._record(key, version)
        return True

    def _record(self, key: tuple[str, str], version: float) -> None:
        now = time.monotonic()
        self.tick += 1
        recent = self._recent
        recent.pop(key, None)
        recent[key] = (version, self.tick, now)
        while recent:  # drop what is too old to matter, oldest first
            first = next(iter(recent))
            if now - recent[first][2] < RECENT_S:
                break
            del recent[first]

    def attach_user(self, user_id: str, room_id: str, from_seq: int | None = None) -> None:
        """Attach the user's connections (the caller checked note_membership). Per-room channels:
        if the room's channel is not subscribed here yet, catch up from `from_seq` once it is."""
        conns = self.by_user.get(user_id)
        if not conns:
            return
        subs = self.subs
        if subs is not None and not subs.room_live(room_id):
            entry = self.catchups.get(room_id)
            if entry is None:
                self.catchups[room_id] = CatchUp(from_seq)
            elif not entry.fetching and from_seq is not None:  # the earliest join wins
                entry.from_seq = from_seq if entry.from_seq is None else min(entry.from_seq, from_seq)
        for conn in conns:
            self.attach(conn, (room_id,))

    def user_in_room(self, user_id: str, room_id: str, text: str) -> None:
        """Deliver to the user's connections attached to the room (a leave on the user's channel)."""
        conns = self.by_user.get(user_id)
        if conns:
            frame = Frame(text)
            for conn in conns:
                if room_id in conn.rooms:
                    conn.push(frame)

    # -- catch-up of a newly subscribed room (FANOUT_CHANNELS=rooms) ---------------------------
    def catch_up_start(self, room_id: str) -> CatchUp | None:
        """The room's channel is confirmed: from now on its live events wait in the buffer while
        the stream is read; None when nothing is to be read (no catch-up, or from_seq unknown)."""
        entry = self.catchups.get(room_id)
        if entry is None:
            return None
        if entry.from_seq is None or entry.floor is not None or room_id not in self.by_room:
            del self.catchups[room_id]
            return None
        entry.fetching = True
        return entry

    def catch_up_done(self, room_id: str, entries: list[tuple[int, str]] | None, has_more: bool = False) -> None:
        """Deliver the stream's messages after from_seq (`entries`: (seq, message JSON); None:
        the read failed), then the live events buffered meanwhile minus what the stream gave."""
        entry = self.catchups.get(room_id)
        if entry is None or not entry.fetching:
            return
        conns = self.by_room.get(room_id)
        floor = entry.from_seq or 0
        if conns:
            gap = entries is None or has_more or bool(entries and entries[0][0] != floor + 1)
            if gap:  # the stream could not say everything: the client syncs the room itself
                resync = Frame(dumps({"type": "resync", "room_id": room_id, "reason": "fanout_gap"}))
                for conn in conns:
                    conn.push(resync)
            for seq, body in entries or ():
                text = message_frame(body)
                frame = Frame(text)
                mid = _message_id(body)
                for conn in conns:
                    pending = conn._pending_acks  # its own message: the ack goes in its place
                    if pending and mid in pending:
                        conn.own_message(text)
                    else:
                        conn.push(frame)
                floor = max(floor, seq)
        log.debug("room %s caught up after a join: %d message(s) from the stream after seq %s, %d live event(s) held",
                  room_id, len(entries or ()), entry.from_seq, len(entry.buffer))
        held, entry.buffer = entry.buffer, []
        entry.fetching, entry.floor = False, floor
        for text, exclude in held:  # to_room drops what the stream gave (floor), in order
            self.to_room(room_id, text, exclude)

    def live_channels(self) -> tuple[list[str], list[str]]:
        """(users, rooms) this process needs channels for: everything, after a subscription loss."""
        return list(self.by_user), list(self.by_room)

    def detach_user(self, user_id: str, room_id: str) -> None:
        for conn in self.by_user.get(user_id, ()):
            conn.rooms.discard(room_id)
            self._unlink(room_id, conn)

    def forget_room(self, room_id: str) -> None:
        self._record((room_id, "*"), float("inf"))
        members = self.by_room.pop(room_id, None)
        for conn in members or ():
            conn.rooms.discard(room_id)
        if members is not None and self.subs is not None:
            self.catchups.pop(room_id, None)
            self.subs.release_room(room_id)

    def close_family(self, user_id: str, family_id: str, code: int, reason: str) -> int:
        """Close the user's connections opened with that login; how many."""
        hit = [c for c in self.by_user.get(user_id, ()) if c.family == family_id]
        for conn in hit:
            conn.close(code, reason)
        return len(hit)

    def fanout_gap(self) -> None:
        """The subscription is back after a loss: a new generation, and every client resyncs."""
        self.gen += 1
        self.catchups.clear()  # the resync covers what a catch-up would have delivered
        resync = Frame(dumps({"type": "resync", "room_id": None, "reason": "fanout_gap"}))  # framed once
        for conn in list(self.conns.values()):
            try:
                conn.fanout_gap(self.gen, resync)
            except Exception:  # noqa: BLE001 - one broken socket must not stop the others
                log.debug("resync of %s failed", conn.id, exc_info=True)

    def refresh_user(self, user_id: str, room_ids: set[str], since_tick: int) -> int:
        """Make the user's connections follow PostgreSQL's room list (read after `since_tick`),
        leaving alone rooms whose membership changed since; how many attachments changed."""
        changed = 0
        for conn in list(self.by_user.get(user_id, ())):
            for room_id in room_ids - conn.rooms:
                if not self.changed_since(room_id, user_id, since_tick):
                    self.attach(conn, (room_id,))
                    changed += 1
            for room_id in conn.rooms - room_ids:
                if not self.changed_since(room_id, user_id, since_tick):
                    conn.rooms.discard(room_id)
                    self._unlink(room_id, conn)
                    changed += 1
        return changed

    def _unlink(self, room_id: str, conn: Connection) -> None:
        members = self.by_room.get(room_id)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.by_room[room_id]
                if self.subs is not None:
                    self.catchups.pop(room_id, None)
                    self.subs.release_room(room_id)

    # -- delivery (the frame is framed once, whatever the number of recipients) --------
    def to_room(self, room_id: str, text: str, exclude: str = "") -> None:
        if self.catchups:  # per-room channels only: a room catching up gets its events in order after
            entry = self.catchups.get(room_id)
            if entry is not None:
                if entry.fetching:
                    entry.buffer.append((text, exclude))
                    return
                if entry.floor is not None and is_message_frame(text):
                    if _message_seq(message_of_frame(text)) <= entry.floor:
                        return  # the stream gave it already
                    del self.catchups[room_id]  # a newer one: no duplicate can follow
        conns = self.by_room.get(room_id)
        own = self.conns.get(exclude) if exclude and not exclude.startswith("~") else None
        if conns:
            frame = Frame(text)
            skip_user = exclude[1:] if exclude.startswith("~") else None
            # push never changes the registry (a dropped connection is removed by its own
            # handler later), so the set is iterated as is, without a copy per event
            for conn in conns:
                if conn is own or (skip_user is not None and conn.user_id == skip_user):
                    continue
                conn.push(frame)
        if own is not None and is_message_frame(text):
            own.own_message(text)

    def to_user(self, user_id: str, text: str, exclude: str = "") -> None:
        conns = self.by_user.get(user_id)
        if conns:
            frame = Frame(text)
            only = exclude[1:] if exclude.startswith("=") else None  # "=<conn id>": that one only
            for conn in conns:
                if conn.id != exclude and (only is None or conn.id == only):
                    conn.push(frame)


def _message_id(body: str) -> str:
    """A message JSON's id (the cache renders it first, app/messages.py); else parsed."""
    if body.startswith('{"id":"') and body[43:44] == '"':
        return body[7:43]
    return str(orjson.loads(body).get("id"))


def _message_seq(body: str) -> int:
    try:
        return int(orjson.loads(body).get("seq") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0
