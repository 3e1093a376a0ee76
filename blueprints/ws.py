"""The WebSocket endpoint `/ws`: handshake checks, the hello, and one handler per frame type.

Frames are parsed and validated here and handed to the services (app/messages.py,
app/rooms.py); live events arrive through the process's fan-out (app/realtime/fanout.py)
into the connection's ordered outbound queue (app/realtime/connection.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit
from typing import Any, Awaitable, Callable

from sanic import Blueprint, Request

from app import access, auth, lifecycle, messages, reads, rooms
from app.realtime import events
from app.realtime.admission import CLOSE_TRY_AGAIN, Admission
from app.realtime.connection import Connection, Frame
from app.realtime.registry import Registry
from app.realtime.inbox import Inbox
from app.errors import (ChatError, Forbidden, InvalidToken, MessageNotFound, NotMember, RateLimited, RoomNotFound,
                        UnknownFrameType, ValidationFailed, to_chat_error)
from app.glue import release_handshake
from app.ids import BIGINT_MAX, parse_uuid
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT
from app.schemas import CreateRoom
from app.serialize import dumps
from app.settings import Settings
from app.validation import check_object, is_echoable, parse, parse_object
from blueprints.deps import bearer_token

log = logging.getLogger("chat.ws")

bp = Blueprint("ws")

CLOSE_TOKEN = 4401
CLOSE_FLOOD = 4429
TYPING_EVERY_S = 1.0  # at most one typing event per room and connection per interval
# Frames about a room one is not in cost the abuser a strike, like a rate-limited frame.
STRIKE_KINDS = frozenset(("send", "sync", "typing", "edit", "delete", "react", "read"))
REACT_OPS = ("add", "remove")


@bp.middleware("request")
async def handshake_checks(request: Request) -> None:
    """Before the upgrade: a foreign browser Origin is 403, a missing or bad token 401."""
    settings: Settings = request.app.ctx.settings
    origin = request.headers.get("origin")
    # No Origin header: not a browser (bots, the load tool), nothing to hijack. A page served
    # from this very host and port (same origin) is not cross-site either.
    if origin is not None and origin not in settings.ws_allowed_origins \
            and not _same_origin(origin, request.headers.get("host")):
        raise Forbidden("This Origin may not open a WebSocket.", details={"origin": origin})
    token = request.args.get("token") or bearer_token(request)
    if not token:
        raise InvalidToken("Missing token: pass ?token= or an Authorization header.")
    app = request.app
    request.ctx.claims = await auth.check_access_token(app.ctx.settings, app.ctx.redis, app.ctx.keys, token)


@bp.signal("websocket.handler.before")
async def take_over_reading(request: Request, websocket: Any) -> None:
    """Right after the upgrade, before any frame can reach Sanic's assembler: read frames ourselves."""
    request.ctx.inbox = Inbox(websocket)


def _same_origin(origin: str, host: str | None) -> bool:
    """The Origin names the host:port the client connected to (the page came from us)."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def _admission(app: Any) -> Admission:
    """This process's connect admission (app/realtime/admission.py), made on first use."""
    adm = getattr(app.ctx, "ws_admission", None)
    if adm is None:
        s: Settings = app.ctx.settings
        adm = app.ctx.ws_admission = Admission(s.ws_admit_concurrency, s.ws_admit_queue, s.ws_admit_retry_ms)
    return adm


@bp.websocket("/ws")
async def ws_endpoint(request: Request, ws: Any) -> None:
    adm = _admission(request.app)
    session = Session(request, ws)
    release_handshake(request, ws)  # what an idle socket would keep of its HTTP request (app/glue.py)
    if not await adm.enter():
        await session.refuse(CLOSE_TRY_AGAIN, adm.retry_reason())
        return
    await session.run(adm.leave)


def _field(frame: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    value = frame.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ValidationFailed({name: f"required, a {'string' if kind is str else 'number'}"})
    return value


def _bounded(frame: dict[str, Any], name: str, lo: int, hi: int, required: bool = True) -> int | None:
    """An integer field in [lo, hi] (seqs and versions are bigints), or validation_failed naming it."""
    value = _field(frame, name, int, required)
    if value is not None and not lo <= value <= hi:
        raise ValidationFailed({name: f"must be between {lo} and {hi}"})
    return value


def _message_seq(frame: dict[str, Any]) -> int:
    """`seq` of edit/delete/react: past a bigint is validation_failed; 0 or below names no
    message (message_not_found, as over HTTP)."""
    seq = _bounded(frame, "seq", -BIGINT_MAX, BIGINT_MAX)
    if seq < 1:  # type: ignore[operator]
        raise MessageNotFound()
    return seq  # type: ignore[return-value]


class Session:
    """One connected client: reads frames in order, answers through its Connection."""

    __slots__ = ("settings", "resources", "redis", "keys", "registry", "claims", "user_id", "conn", "ws", "inbox",
                 "strikes", "typing_at")

    def __init__(self, request: Request, ws: Any) -> None:
        app = request.app
        self.settings: Settings = app.ctx.settings
        self.resources = app.ctx.resources
        self.redis = app.ctx.redis
        self.keys = app.ctx.keys
        self.registry: Registry = app.ctx.registry
        self.claims = request.ctx.claims
        self.user_id: str = self.claims.user_id
        inbox = getattr(request.ctx, "inbox", None)
        self.inbox: Inbox = inbox if inbox is not None else Inbox(ws)
        # The Inbox's raw view of the socket, bound once, is the Connection's too.
        self.conn = Connection(ws, self.user_id, self.settings.ws_outbox_frames, family=self.claims.family_id,
                               registry=self.registry, sock=self.inbox.sock)
        self.ws = ws
        self.inbox.conn = self.conn  # its pongs answer the process's heartbeat pings
        self.strikes = 0
        self.typing_at: dict[str, float] = {}

    async def refuse(self, code: int, reason: str) -> None:
        """Close at once (admission full): nothing registered, nothing read."""
        conn = self.conn
        conn.start()
        conn.close(code, reason)
        try:
            await conn.drain()
        finally:
            conn.stop()

    async def run(self, admitted: Callable[[], None] | None = None) -> None:
        """Serve the connection; `admitted` (the admission slot's release) is called once, as
        soon as the hello is queued or the set-up ends otherwise."""
        conn = self.conn
        # Register before reading the rooms, so a join or leave published meanwhile reaches us
        # too (see _set_up).
        self.registry.add(conn)
        try:
            try:
                # Its own coroutine: the set-up's locals (the hello, the room lists, the Redis
                # replies) are freed once it returns instead of living in this frame for the
                # connection's whole life (~1 KB per idle connection).
                if not await self._set_up():
                    return
            finally:
                if admitted is not None:
                    admitted()  # set up: the slot goes to the next connect in the queue
            # One timer per process for all expiries (the registry), not one per connection.
            self.registry.close_at(conn, self.claims.expires_at.timestamp() - time.time(), CLOSE_TOKEN,
                                   "token expired")
            recv, handle = self.inbox.recv, self.handle
            while not conn.closing:
                await handle(await recv())
            await conn.drain()  # a close we queued (4429, 4401) goes out after the frames before it
        finally:
            self.registry.remove(conn)  # a pending expiry of a connection that left does nothing
            conn.stop()

    async def _set_up(self) -> bool:
        """Attach the user's rooms and queue the hello; False: logged out meanwhile (closed)."""
        conn = self.conn
        # Attach only the rooms whose membership did not change during the read (a kick that
        # landed meanwhile must not be undone by our older read).
        since = self.registry.tick
        if self.registry.subs is not None:  # FANOUT_CHANNELS=rooms: joins published during the read reach us
            await self.registry.subscribed(self.user_id)
        # One Redis round trip: the logout check and the user's cached room list (PostgreSQL
        # only when Redis has no list: app/store/user_rooms.py).
        revoked, listed, pg_markers = await rooms.connect_rooms(
            self.redis, self.keys, self.settings, user_id=self.user_id, family_id=self.claims.family_id)
        if revoked:
            # Logged out between the handshake check and our registration (whose close
            # event found nothing to close yet).
            conn.start()
            conn.close(CLOSE_TOKEN, "logged out")
            await conn.drain()
            return False
        self.registry.attach_fresh(conn, listed, since)
        room_ids = [r for r in listed if r in conn.rooms] + sorted(conn.rooms.difference(listed))
        if self.registry.subs is not None:  # the rooms' channels live before last_seq is read
            await self.registry.subscribed(room_ids=room_ids)
        # Per room: last_seq and last_version (the client's two catch-up cursors) and the
        # read state (its badges), one more round trip; PostgreSQL's markers are the floor
        # of Redis's, read only for rooms whose marker Redis lacks.
        hello = {"type": "hello", "user_id": self.user_id,
                 "rooms": await reads.hello_rooms(self.resources, self.user_id, self.claims.username, room_ids,
                                                  pg_markers),
                 "heartbeat_s": self.settings.ws_heartbeat_s}
        conn.start(first=Frame(dumps(hello)))
        return True

    async def handle(self, data: str | bytes) -> None:
        ref = kind = None
        try:
            frame = parse_object(data, "frame", check=False)
            cid = frame.get("client_id")
            ref = cid if isinstance(cid, str) and is_echoable(cid) else None
            check_object(frame)  # the door's text rule, after ref: the error names the frame
            kind = frame.get("type")
            handler = HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise UnknownFrameType(f"Unknown frame type {kind!r}.")
            await handler(self, frame)
        except RateLimited as exc:
            self.strike(exc, ref)
        except (NotMember, RoomNotFound) as exc:
            if kind in STRIKE_KINDS:  # a room one is not in: abuse costs the abuser
                self.strike(exc, ref)
            else:
                self.error(exc, ref)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error is a frame; the connection stays open
            err = to_chat_error(exc)
            if err.status >= 500 and err.code == "internal_error":
                log.exception("error handling a frame of user %s", self.user_id, exc_info=exc)
            self.error(err, ref)

    def strike(self, err: ChatError, ref: str | None) -> None:
        self.strikes += 1
        self.error(err, ref)
        if self.strikes > self.settings.rate_limit_strikes:
            self.conn.close(CLOSE_FLOOD, "rate limited")

    def error(self, err: ChatError, ref: str | None) -> None:
        self.conn.send({"type": "error", "code": err.code, "message": err.message, "ref": ref,
                        "details": err.details})

    # -- frames -------------------------------------------------------------------
    async def on_send(self, frame: dict[str, Any]) -> None:
        room_id = _field(frame, "room_id", str)
        body = frame.get("body")
        generation = self.registry.gen  # before the send: tells a lagging stream from a lost event
        msg, created = await messages.accept_message(
            self.resources, room_id=room_id, sender_id=self.user_id, body=body, client_id=frame.get("client_id"),
            conn_id=self.conn.id, reply_to=frame.get("reply_to"))  # type: ignore[arg-type]
        self.strikes = 0
        if created:
            self.conn.expect_ack(msg, generation)  # rides the room's event stream, in seq order
        else:
            self.conn.send({"type": "ack", "client_id": msg.get("client_id"), "message": msg})

    async def _require_member(self, room_id: str) -> str:
        # The Redis member set decides (one round trip), never this connection's own view of
        # its rooms, which may lag a kick by the time its event takes to arrive.
        return await access.authorize(self.redis, self.keys, room_id, self.user_id)

    async def on_sync(self, frame: dict[str, Any]) -> None:
        # Fields are checked before membership: a bad frame gets validation_failed naming it.
        raw_room = _field(frame, "room_id", str)
        after = _field(frame, "after_seq", int)
        if not 0 <= after < BIGINT_MAX:  # seqs are bigints; history reads from after_seq + 1
            raise ValidationFailed({"after_seq": f"must be between 0 and {BIGINT_MAX - 1}"})
        # Versions count changes like seqs count messages: bigints; changes are read after it.
        after_version = _bounded(frame, "after_version", 0, BIGINT_MAX - 1, required=False)
        limit = _field(frame, "limit", int, required=False)
        if limit is None:
            limit = DEFAULT_LIMIT
        elif limit < 1:
            raise ValidationFailed({"limit": "must be at least 1"})
        limit = min(limit, MAX_LIMIT)
        room_id: str | None = None
        if after_version is None:
            # The membership check rides the read's own script (one round trip; a reconnect
            # storm syncs every room of every client): only when the Redis set does not say
            # "member" does the full check below run (it heals a lost set or raises 403/404).
            try:
                items, has_more = await self._history(raw_room, after, limit, member=self.user_id)
                room_id = parse_uuid(raw_room, RoomNotFound)
            except messages.MembershipUnknown:
                pass
        found: dict[str, Any] = {}
        if room_id is None:
            room_id = await self._require_member(raw_room)
            if after_version is not None:
                # The older messages (seq <= after_seq) changed since after_version, latest state
                # each; newer ones come in `messages`, as they are now. Read BEFORE the messages:
                # a change made in between then shows in the messages' state or has a version
                # above last_version (the next sync's), so none falls between the two reads.
                changes, more, last_version = await messages.changes_since(
                    self.resources, room_id=room_id, after_version=after_version, max_seq=after, limit=limit,
                    viewer_id=self.user_id)
                found = {"changes": changes, "changes_has_more": more, "last_version": last_version}
            items, has_more = await self._history(room_id, after, limit)
        self.conn.send({"type": "sync", "room_id": room_id, "messages": items, "has_more": has_more, **found})

    async def _history(self, room_id: str, after: int, limit: int,
                       member: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        return await messages.history(redis=self.redis, keys=self.keys, settings=self.settings, room_id=room_id,
                                      before=None, after=after, limit=limit, viewer_id=self.user_id, member=member)

    async def on_edit(self, frame: dict[str, Any]) -> None:
        # No direct answer: the message_updated event reaches every connection of every member,
        # this one too, in the room's order.
        room_id, seq = _field(frame, "room_id", str), _message_seq(frame)
        await lifecycle.edit_message(self.resources, room_id=room_id, seq=seq, user_id=self.user_id,
                                     body=frame.get("body"))

    async def on_delete(self, frame: dict[str, Any]) -> None:
        room_id, seq = _field(frame, "room_id", str), _message_seq(frame)
        await lifecycle.delete_message(self.resources, room_id=room_id, seq=seq,
                                       user_id=self.user_id)

    async def on_react(self, frame: dict[str, Any]) -> None:
        room_id, seq = _field(frame, "room_id", str), _message_seq(frame)
        emoji = _field(frame, "emoji", str)
        op = frame.get("op")
        if op not in REACT_OPS:
            raise ValidationFailed({"op": "must be add or remove"})
        lifecycle.validate_emoji(emoji)
        # A no-op (adding a reaction one has, removing one one has not) publishes nothing.
        await lifecycle.react(self.resources, room_id=room_id, seq=seq, user_id=self.user_id,
                              emoji=emoji, add=op == "add")

    async def on_read(self, frame: dict[str, Any]) -> None:
        room_id = _field(frame, "room_id", str)
        seq = _bounded(frame, "seq", 0, BIGINT_MAX)
        # The answer is the `read` event, moved or not: to every connection of the user when it
        # moved, else to this one alone, both through the events channel, so no connection is
        # ever told a marker older than one it was told before.
        await reads.mark_read(self.resources, room_id=room_id, user_id=self.user_id, username=self.claims.username,
                              seq=seq, conn_id=self.conn.id)

    async def on_typing(self, frame: dict[str, Any]) -> None:
        room_id = await self._require_member(_field(frame, "room_id", str))
        now = time.monotonic()
        if now - self.typing_at.get(room_id, -TYPING_EVERY_S) < TYPING_EVERY_S:
            return  # a client repeating typing on each keystroke: one event per interval is enough
        self.typing_at[room_id] = now
        out = {"type": "typing", "room_id": room_id, "user_id": self.user_id}
        await events.to_room(self.redis, self.keys, room_id, out, exclude_conn=f"~{self.user_id}")

    async def on_create_room(self, frame: dict[str, Any]) -> None:
        data = parse(CreateRoom, frame)
        since = self.registry.tick
        room = await rooms.create_room(redis=self.redis, keys=self.keys, owner_id=self.user_id, data=data,
                                       settings=self.settings)
        # The create publishes member_joined for every member (which attaches sockets everywhere);
        # attach this one now too, so a message sent right after the reply is not missed.
        self.registry.attach_fresh(self.conn, (room["id"],), since)
        if self.registry.subs is not None:  # FANOUT_CHANNELS=rooms: the room's channel live before the reply
            await self.registry.subscribed(room_ids=(room["id"],))
        out: dict[str, Any] = {"type": "room_created", "room": room}
        if isinstance(frame.get("client_id"), str):
            out["client_id"] = frame["client_id"]
        self.conn.send(out)

    async def on_join(self, frame: dict[str, Any]) -> None:
        room_id = _field(frame, "room_id", str)
        since = self.registry.tick
        membership = await rooms.join_room(redis=self.redis, keys=self.keys, room_id=room_id, user_id=self.user_id,
                                           settings=self.settings)
        # Unless a leave (a kick right after the join) or the join's own event came meanwhile.
        self.registry.attach_fresh(self.conn, (membership["room_id"],), since)
        if self.registry.subs is not None:  # FANOUT_CHANNELS=rooms: the room's channel live before the reply
            await self.registry.subscribed(room_ids=(membership["room_id"],))
        self.conn.send({"type": "joined", "membership": membership})

    async def on_leave(self, frame: dict[str, Any]) -> None:
        room_id = parse_uuid(_field(frame, "room_id", str), RoomNotFound)
        await rooms.leave_room(redis=self.redis, keys=self.keys, room_id=room_id, user_id=self.user_id)
        self.conn.send({"type": "left", "room_id": room_id})

    async def on_ping(self, frame: dict[str, Any]) -> None:
        self.conn.send({"type": "pong"})


# One table for every session (a dict of bound methods per connection cost ~1 KB each).
HANDLERS: dict[str, Callable[[Session, dict[str, Any]], Awaitable[None]]] = {
    "send": Session.on_send, "sync": Session.on_sync, "typing": Session.on_typing,
    "create_room": Session.on_create_room, "join": Session.on_join, "leave": Session.on_leave,
    "ping": Session.on_ping, "edit": Session.on_edit, "delete": Session.on_delete, "react": Session.on_react,
    "read": Session.on_read,
}
