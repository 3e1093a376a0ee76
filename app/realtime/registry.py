"""This process's WebSocket connections by id, by user and by room: the LOCAL half of the fan-out.

Events reach every process through Redis pub/sub (app/realtime/fanout.py); each process
delivers to its own sockets from here (app/realtime/connection.py writes them). Joins and
leaves carry their membership version: the registry ignores one older than the
last it applied for that user and room (a late join cannot re-attach a user
removed after it, nor a join published after its room's deletion), and a
connection being set up skips the rooms whose membership changed while it read
them from PostgreSQL (`tick`, `attach_fresh`).
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from app.realtime.connection import Connection, Frame
from app.realtime.events import is_message_frame
from app.serialize import dumps

log = logging.getLogger("chat.ws")

RECENT_S = 300.0  # how long a join/leave version is remembered (a late event is late by ms, not minutes)


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

    def add(self, conn: Connection) -> None:
        self.conns[conn.id] = conn
        self.by_user.setdefault(conn.user_id, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        self.conns.pop(conn.id, None)
        users = self.by_user.get(conn.user_id)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[conn.user_id]
        for room_id in conn.rooms:
            self._unlink(room_id, conn)
        conn.rooms.clear()

    def attach(self, conn: Connection, room_ids: Iterable[str]) -> None:
        for room_id in room_ids:
            self.by_room.setdefault(room_id, set()).add(conn)
            conn.rooms.add(room_id)

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

    def attach_user(self, user_id: str, room_id: str) -> None:
        """Attach the user's connections (the caller checked note_membership)."""
        for conn in self.by_user.get(user_id, ()):
            self.attach(conn, (room_id,))

    def detach_user(self, user_id: str, room_id: str) -> None:
        for conn in self.by_user.get(user_id, ()):
            conn.rooms.discard(room_id)
            self._unlink(room_id, conn)

    def forget_room(self, room_id: str) -> None:
        self._record((room_id, "*"), float("inf"))
        for conn in self.by_room.pop(room_id, ()):
            conn.rooms.discard(room_id)

    def close_family(self, user_id: str, family_id: str, code: int, reason: str) -> int:
        """Close the user's connections opened with that login; how many."""
        hit = [c for c in self.by_user.get(user_id, ()) if c.family == family_id]
        for conn in hit:
            conn.close(code, reason)
        return len(hit)

    def fanout_gap(self) -> None:
        """The subscription is back after a loss: a new generation, and every client resyncs."""
        self.gen += 1
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

    # -- delivery (the frame is framed once, whatever the number of recipients) --------
    def to_room(self, room_id: str, text: str, exclude: str = "") -> None:
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
