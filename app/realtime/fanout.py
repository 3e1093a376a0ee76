"""Cross-process fan-out: one Redis pub/sub subscription per server process.

Every event (app/realtime/events.py) is published once to `Keys.events_channel()`; each
server process receives it on its single subscription and delivers it to its
own connections through the local `Registry` (app/realtime/registry.py). Routes:

    r:<room_id>            the room's local connections
    u:<user_id>            the user's local connections
    j:<room_id>:<user_id>:<version>  attach the user's connections to the room, then deliver to the room
    l:<room_id>:<user_id>:<version>  deliver to the room (the user included), then detach the user
    d:<room_id>            deliver to the room, then forget the room
    f:<user_id>:<family>   close the user's connections of that login with 4401 (logged out)

A join or leave older than the last one applied for that user and room is stale
and ignored (its frame too): membership versions follow commit order.

FANOUT_CHANNELS=rooms (`Subscriptions` below): instead of the one channel, the process's
subscriber connection holds the channel of every user with a connection here and of every
room a connection here is attached to (Keys.room_channel / user_channel), and drops them
(batched, FANOUT_UNSUB_DELAY_S after the last connection left). Joins and leaves come as two events
(app/realtime/events.py): j:/l: on the user's channel attach/detach that user's connections
and deliver to them alone; J:/L: on the room's channel deliver to the room's other connections.
A room subscribed because a join attached its user here catches up from its stream (the j:
event carries the room's last seq at the join; registry.CatchUp). A connect and a WebSocket
join wait for their channels' confirmation (`Registry.subscribed`) before reading last_seq.

The exclude field is a connection id (the sender of a message: it gets its
`ack` in the message's place, so acks keep seq order too), "~<user_id>" (all
connections of that user, e.g. for typing), or empty.

Redis pub/sub does not replay what a disconnected subscriber missed. So when
the subscription comes back after a loss, every connection of the process gets
`{"type":"resync","room_id":null,"reason":"fanout_gap"}` (clients then `sync`
from their last seq), acks whose events were lost go out directly, and the
connections' rooms are re-read from PostgreSQL (a kick missed in the gap must
not leave the kicked user reading).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sanic import Sanic

from app.realtime.registry import Registry
from app.metrics import FANOUT_SAMPLER
from app.realtime.events import decode
from app.store.keys import Keys

CLOSE_LOGGED_OUT = 4401
REFRESH_BATCH = 500  # users per PostgreSQL query when re-reading rooms after a gap

log = logging.getLogger("chat.fanout")

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
SUBSCRIBE_BATCH = 1000  # channels per SUBSCRIBE / UNSUBSCRIBE command
HEARTBEAT_SLICE = 250  # connections pinged per loop iteration: a beat never stalls delivery for long


def subscriber_name(prefix: str) -> str:
    """The Redis client name of this process's subscription (CLIENT LIST shows it)."""
    return f"{prefix}:fanout:{os.getpid()}"


def dispatch(registry: Registry, payload: str) -> None:
    """Deliver one pub/sub payload to this process's connections."""
    route, exclude, frame = decode(payload)
    kind, _, target = route.partition(":")
    if kind == "r":
        registry.to_room(target, frame, exclude)
    elif kind == "u":
        registry.to_user(target, frame, exclude)
    elif kind == "j":
        room_id, user_id, version, from_seq = _membership(target)
        if registry.note_membership(room_id, user_id, version):  # else stale: a newer change was applied
            if registry.subs is None:
                registry.attach_user(user_id, room_id)
                registry.to_room(room_id, frame, exclude)
            else:  # the user's channel: their connections only (the room's get J:)
                registry.attach_user(user_id, room_id, from_seq)
                registry.to_user(user_id, frame, exclude)
    elif kind == "l":
        room_id, user_id, version, _ = _membership(target)
        if registry.note_membership(room_id, user_id, version):
            if registry.subs is None:
                registry.to_room(room_id, frame, exclude)
            else:
                registry.user_in_room(user_id, room_id, frame)
            registry.detach_user(user_id, room_id)
    elif kind == "J" or kind == "L":  # the room's copy of a join/leave: all but that user's connections
        room_id, user_id, version, _ = _membership(target)
        # its own version record (the user's copy has the (room, user) one), so a stale copy is dropped too
        if registry.note_membership(room_id, "~" + user_id, version):
            registry.to_room(room_id, frame, "~" + user_id)
    elif kind == "d":
        registry.to_room(target, frame, exclude)
        registry.forget_room(target)
    elif kind == "f":
        user_id, _, family = target.partition(":")
        registry.close_family(user_id, family, CLOSE_LOGGED_OUT, "logged out")
    else:
        log.warning("unknown event route %r", route)


def _membership(target: str) -> tuple[str, str, int, int | None]:
    """"<room>:<user>[:<version>[:<last_seq>]]" -> (room, user, version, last_seq); version 0 =
    none (always applies); last_seq None = not given (no catch-up)."""
    parts = target.split(":")
    version = int(parts[2]) if len(parts) > 2 and parts[2] else 0
    last_seq = int(parts[3]) if len(parts) > 3 and parts[3] else None
    return parts[0], parts[1], version, last_seq


class Subscriptions:
    """FANOUT_CHANNELS=rooms: the channels this process holds on its one subscriber connection.

    The registry says what it needs (`need_user`/`need_room` when a user's first connection
    comes or a room's first connection attaches; `release_*` when the last goes) without
    waiting; one writer task sends the SUBSCRIBEs at once and the UNSUBSCRIBEs in batches
    unsub_delay_s later, for channels still unneeded then. The reader (subscribe_forever) reads
    the confirmations: `ready()` waits for them. Redis answers a connection's commands in
    order, so a channel unsubscribed and subscribed again is live at the last confirmation of
    its SUBSCRIBEs (`_inflight` counts them).
    """

    def __init__(self, keys: Keys, registry: Registry, redis: Redis | None = None, *, unsub_delay_s: float = 1.0,
                 ready_timeout_s: float = 5.0, catch_up_max: int = 1000) -> None:
        # FANOUT_UNSUB_DELAY_S: a user reconnecting or a room re-attached within it costs no round
        # trip; FANOUT_READY_TIMEOUT_S: then the connect goes on (a lost subscription ends in a
        # resync anyway); FANOUT_CATCH_UP_MAX: stream entries a catch-up reads (more: resync).
        self.unsub_delay_s, self.ready_timeout_s, self.catch_up_max = unsub_delay_s, ready_timeout_s, catch_up_max
        self.keys = keys
        self.registry = registry
        self.redis = redis  # the command client: catch-up reads of a room's stream
        self.conn: object | None = None  # the live subscriber connection (None: down)
        self.sent: set[str] = set()  # SUBSCRIBEd on this connection, not UNSUBSCRIBEd since
        self.confirmed: set[str] = set()  # ... and Redis confirmed it: events flow
        self._inflight: dict[str, int] = {}  # SUBSCRIBEs sent whose confirmation is not read yet
        self._meaning: dict[str, tuple[str, str]] = {}  # channel -> ("u"|"r", id)
        self._to_sub: set[str] = set()
        self._to_unsub: dict[str, float] = {}  # channel -> when it became unneeded
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # catch-up reads, referenced until done

    # -- what the registry needs (synchronous, called from delivery and connect code) --------
    def need_user(self, user_id: str) -> None:
        self._need(self.keys.user_channel(user_id), ("u", user_id))

    def need_room(self, room_id: str) -> None:
        self._need(self.keys.room_channel(room_id), ("r", room_id))

    def release_user(self, user_id: str) -> None:
        self._release(self.keys.user_channel(user_id))

    def release_room(self, room_id: str) -> None:
        self._release(self.keys.room_channel(room_id))

    def room_live(self, room_id: str) -> bool:
        """The room's channel is confirmed: its events reach this process now."""
        return self.keys.room_channel(room_id) in self.confirmed

    def _need(self, channel: str, meaning: tuple[str, str]) -> None:
        self._meaning[channel] = meaning
        self._to_unsub.pop(channel, None)
        if channel not in self.sent:
            self._to_sub.add(channel)
            self._wake.set()

    def _release(self, channel: str) -> None:
        if channel in self.sent or channel in self._to_sub:
            self._to_unsub.setdefault(channel, time.monotonic())
            self._wake.set()

    def _needed(self, channel: str) -> bool:
        meaning = self._meaning.get(channel)
        if meaning is None:
            return False
        kind, ident = meaning
        return ident in (self.registry.by_user if kind == "u" else self.registry.by_room) or channel in self._waiters

    async def ready(self, user_id: str | None, room_ids: Iterable[str]) -> None:
        """Wait until the channels of the user and rooms are confirmed (at most ready_timeout_s:
        Redis down means the reconnect's resync covers what the wait would have)."""
        channels = [self.keys.room_channel(r) for r in room_ids]
        if user_id is not None:
            channels.append(self.keys.user_channel(user_id))
        loop = asyncio.get_running_loop()
        futures = []
        for channel in channels:
            if channel in self.confirmed:
                continue
            if channel not in self._meaning:  # not asked for by the registry (the caller's mistake)
                continue
            if channel not in self.sent:
                self._to_sub.add(channel)
                self._wake.set()
            fut = loop.create_future()
            self._waiters.setdefault(channel, []).append(fut)
            futures.append((channel, fut))
        if not futures:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(f for _, f in futures)), self.ready_timeout_s)
        except asyncio.TimeoutError:
            log.warning("fan-out: %d channel(s) not confirmed within %.1fs", len(futures), self.ready_timeout_s)
        finally:
            for channel, fut in futures:
                waiting = self._waiters.get(channel)
                if waiting is not None and fut in waiting:
                    waiting.remove(fut)
                    if not waiting:
                        del self._waiters[channel]

    # -- the subscriber connection's side (subscribe_forever) --------------------------------
    def connected(self, conn: object) -> list[str]:
        """A new subscriber connection: nothing is subscribed on it; -> every channel needed now."""
        self.conn = conn
        self.sent.clear()
        self.confirmed.clear()
        self._inflight.clear()
        self._to_unsub.clear()
        users, rooms = self.registry.live_channels()
        wanted = {self.keys.user_channel(u): ("u", u) for u in users}
        wanted.update((self.keys.room_channel(r), ("r", r)) for r in rooms)
        self._meaning = {**{c: m for c, m in self._meaning.items() if c in self._waiters}, **wanted}
        self._to_sub.clear()
        return [*wanted, *(c for c in self._waiters if c not in wanted)]

    def lost(self) -> None:
        self.conn = None
        self.sent.clear()
        self.confirmed.clear()
        self._inflight.clear()

    def sending(self, channels: list[str]) -> None:
        """SUBSCRIBE of `channels` is about to be written on the current connection."""
        for channel in channels:
            self.sent.add(channel)
            self._inflight[channel] = self._inflight.get(channel, 0) + 1

    def pending(self) -> int:
        """SUBSCRIBEs whose confirmation has not been read yet."""
        return len(self._inflight)

    def on_subscribed(self, channel: str) -> None:
        """A subscribe confirmation was read: the channel is live once its last SUBSCRIBE is."""
        left = self._inflight.get(channel, 0) - 1
        if left > 0:
            self._inflight[channel] = left
            return
        self._inflight.pop(channel, None)
        if channel not in self.sent:
            return  # unsubscribed again meanwhile
        self.confirmed.add(channel)
        for fut in self._waiters.pop(channel, ()):
            if not fut.done():
                fut.set_result(None)
        meaning = self._meaning.get(channel)
        if meaning is not None and meaning[0] == "r":
            entry = self.registry.catch_up_start(meaning[1])
            if entry is not None:
                task = asyncio.create_task(self._catch_up(meaning[1], entry.from_seq or 0))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, room_id: str, from_seq: int) -> None:
        """Read the room's stream after `from_seq` (what was published before our subscription)."""
        entries: list[tuple[int, str]] | None = None
        more = False
        try:
            if self.redis is not None:
                raw = await self.redis.xrange(self.keys.room_log(room_id), min=f"{from_seq + 1}-0", max="+",
                                              count=self.catch_up_max + 1)
                entries = [(int(str(eid).partition("-")[0]), fields["m"]) for eid, fields in raw if "m" in fields]
                more = len(entries) > self.catch_up_max
                entries = entries[:self.catch_up_max]
        except (RedisError, OSError, ValueError, KeyError):
            log.warning("catch-up read of room %s failed; its new connections resync", room_id, exc_info=True)
            entries = None
        except asyncio.CancelledError:
            raise
        self.registry.catch_up_done(room_id, entries, more)

    def _due_unsubs(self, now: float) -> tuple[list[str], float | None]:
        """Channels unneeded for unsub_delay_s (and still unneeded); when the next is due."""
        due, later = [], None
        delay = self.unsub_delay_s
        for channel, since in list(self._to_unsub.items()):
            if self._needed(channel):
                del self._to_unsub[channel]
            elif now - since >= delay:
                del self._to_unsub[channel]
                due.append(channel)
            else:
                later = since + delay if later is None else min(later, since + delay)
        return due, later

    async def write_forever(self) -> None:
        """The one writer on the subscriber connection: SUBSCRIBE now, UNSUBSCRIBE lazily."""
        timeout: float | None = None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            timeout = None
            conn = self.conn
            if conn is None:
                continue  # connected() subscribes everything needed when the connection is back
            try:
                subs = [c for c in self._to_sub if c not in self.sent]
                self._to_sub.clear()
                for i in range(0, len(subs), SUBSCRIBE_BATCH):
                    chunk = subs[i:i + SUBSCRIBE_BATCH]
                    self.sending(chunk)
                    await conn.send_command("SUBSCRIBE", *chunk)  # type: ignore[attr-defined]
                due, later = self._due_unsubs(time.monotonic())
                if later is not None:  # wake up when the next release is due
                    timeout = max(later - time.monotonic(), 0.01)
                due = [c for c in due if c in self.sent]
                for c in due:
                    self.sent.discard(c)
                    self.confirmed.discard(c)
                    self._meaning.pop(c, None)
                for i in range(0, len(due), SUBSCRIBE_BATCH):
                    await conn.send_command("UNSUBSCRIBE", *due[i:i + SUBSCRIBE_BATCH])  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the reader sees the loss and reconnects
                log.debug("fan-out subscription write failed", exc_info=True)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def refresh_rooms(registry: Registry) -> int:
    """After a gap: re-read from PostgreSQL the rooms of every user with a local connection, in
    batches, and attach/detach to match (membership events seen meanwhile win)."""
    from models.room import Membership  # the server has Tortoise initialised; imported late

    users = list(registry.by_user)
    changed = 0
    for i in range(0, len(users), REFRESH_BATCH):
        batch = users[i:i + REFRESH_BATCH]
        since = registry.tick
        rows = await Membership.filter(user_id__in=batch, banned=False).values_list("user_id", "room_id")
        rooms: dict[str, set[str]] = {u: set() for u in batch}
        for user_id, room_id in rows:
            rooms.setdefault(str(user_id), set()).add(str(room_id))
        for user_id, room_ids in rooms.items():
            changed += registry.refresh_user(user_id, room_ids, since)
    return changed


async def _after_gap(registry: Registry) -> None:
    try:
        changed = await refresh_rooms(registry)
        log.info("fan-out gap: rooms re-read from PostgreSQL, %d attachment(s) corrected", changed)
    except Exception:  # noqa: BLE001 - PostgreSQL down too: the next gap or reconnects repair it
        log.warning("could not re-read rooms after a fan-out gap", exc_info=True)


async def subscribe_forever(redis: Redis, keys: Keys, registry: Registry, ready: asyncio.Event | None = None,
                           alternates: Callable[[], list[tuple[str, int]]] | None = None,
                           subs: Subscriptions | None = None) -> None:
    """Receive events and dispatch them; reconnect with backoff when Redis goes away.

    The subscription is one dedicated connection read directly (SUBSCRIBE, then one reply
    per event): redis-py's PubSub.listen() adds a health check, a retry wrapper, a timeout
    context and a dict per message, which cost more than the delivery of a small event.

    `alternates` (Redis Cluster): the other nodes' (host, port). A cluster broadcasts every
    unsharded PUBLISH to all its nodes, so one plain connection to any node gets every event.
    After a loss the first try goes to REDIS_URL's node again, each failed try to the next node
    the cluster client knows, so a dead master does not stop the fan-out.

    `subs` (FANOUT_CHANNELS=rooms): the channels come from it, all of them subscribed again
    after a loss (confirmed before the resync goes out); later ones are written by its writer.
    """
    backoff = BACKOFF_MIN_S
    channel = keys.events_channel()
    pool = redis.connection_pool
    lost = False  # a subscription existed and dropped: the next one starts after a gap
    repairs: set[asyncio.Task[None]] = set()  # the re-reads after a gap, referenced until done
    candidates: list[tuple[str, int] | None] = [None]  # None: the pool's own node (REDIS_URL)
    turn = 0
    while True:
        conn = None
        own = False  # a connection to another cluster node, outside the pool
        subscribed = False
        try:
            target = candidates[turn % len(candidates)]
            if target is None:
                conn = await pool.get_connection()
            else:
                own = True
                conn = pool.connection_class(**{**pool.connection_kwargs, "host": target[0], "port": target[1]})
                await conn.connect()
            if subs is None:
                await conn.send_command("SUBSCRIBE", channel)
                while True:  # the confirmation (a reply of another kind cannot come before it)
                    reply = await conn.read_response()
                    if isinstance(reply, list) and reply and reply[0] == "subscribe":
                        break
            else:
                wanted = subs.connected(conn)
                for i in range(0, len(wanted), SUBSCRIBE_BATCH):
                    chunk = wanted[i:i + SUBSCRIBE_BATCH]
                    subs.sending(chunk)
                    await conn.send_command("SUBSCRIBE", *chunk)
                subs.conn = conn  # from now on its writer may add channels (one writer at a time)
                subs._wake.set()
                while subs.pending():  # every channel confirmed before the resync below
                    _receive(registry, subs, await conn.read_response())
            if lost:
                # No await since the confirmation: every event from here on is dispatched after this.
                log.warning("fan-out subscription restored; %d connection(s) told to resync", len(registry.conns))
                registry.fanout_gap()
                task = asyncio.create_task(_after_gap(registry))
                repairs.add(task)
                task.add_done_callback(repairs.discard)
            lost = subscribed = True
            backoff = BACKOFF_MIN_S
            if ready is not None:
                ready.set()
            read = conn.read_response  # no socket timeout on this client: blocks until an event
            while subs is not None:
                _receive(registry, subs, await read())
            while True:
                reply = await read()
                if type(reply) is not list or len(reply) != 3 or reply[0] != "message":
                    continue
                try:
                    dispatch(registry, reply[2])
                    FANOUT_SAMPLER.sample(reply[2])  # chat_fanout_lag_seconds, about once a second
                except Exception:  # noqa: BLE001 - one bad payload must not stop the fan-out
                    log.exception("could not deliver event")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis down or restarted: retry
            if subs is not None:
                subs.lost()
            if alternates is not None:  # a cluster: the next node (the list as the client knows it now)
                try:
                    home = (pool.connection_kwargs.get("host"), pool.connection_kwargs.get("port"))
                    candidates = [None, *(n for n in dict.fromkeys(alternates()) if n != home)]
                except Exception:  # noqa: BLE001 - keep the list we had
                    pass
                turn = 0 if subscribed else turn + 1
            log.warning("fan-out subscription lost (%s); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            if conn is not None:
                try:  # the connection is in subscribed state: never hand it back usable
                    await conn.disconnect()
                    if not own:
                        await pool.release(conn)
                except Exception:  # noqa: BLE001
                    pass


def _receive(registry: Registry, subs: Subscriptions, reply: object) -> None:
    """One reply on a per-room-channels subscriber connection: an event or a confirmation."""
    if type(reply) is not list or len(reply) != 3:
        return
    kind = reply[0]
    if kind == "message":
        try:
            dispatch(registry, reply[2])
            FANOUT_SAMPLER.sample(reply[2])
        except Exception:  # noqa: BLE001 - one bad payload must not stop the fan-out
            log.exception("could not deliver event")
    elif kind == "subscribe":
        subs.on_subscribed(reply[1])


async def heartbeat_forever(registry: Registry, interval_s: float) -> None:
    """Every `interval_s`: ping each local connection, closing (1011) those whose previous ping
    got no pong. One loop per process instead of a keepalive task per connection (~2 KB each)."""
    while True:
        await asyncio.sleep(interval_s)
        conns = list(registry.conns.values())
        for i in range(0, len(conns), HEARTBEAT_SLICE):
            for conn in conns[i:i + HEARTBEAT_SLICE]:
                try:
                    conn.heartbeat()
                except Exception:  # noqa: BLE001 - one broken socket must not stop the heartbeat
                    log.debug("heartbeat of %s failed", conn.id, exc_info=True)
            await asyncio.sleep(0)


def setup_fanout(app: Sanic) -> None:
    """Create the local registry, start the subscription and the heartbeat with the server; stop them after."""

    @app.before_server_start
    async def _start(app: Sanic) -> None:
        app.ctx.registry = registry = Registry()
        ready = asyncio.Event()
        # A client of its own, named, so the subscription never waits on the command pool
        # and an operator can spot it in CLIENT LIST.
        settings = app.ctx.settings
        # No client-level retries: a silent internal reconnect would hide the gap from our loop.
        # RESP2: an event is a plain ["message", channel, data] reply (RESP3 sends pushes, which
        # redis-py routes through its push handler); no socket timeout: the read waits for events.
        app.ctx.fanout_redis = Redis.from_url(settings.redis_url, decode_responses=True,
                                              client_name=subscriber_name(settings.redis_prefix),
                                              retry=Retry(NoBackoff(), 0), protocol=2, socket_timeout=None,
                                              # a cluster moves on to the next node when one does not answer
                                              socket_connect_timeout=settings.redis_connect_timeout_s
                                              if settings.redis_cluster else None)
        alternates = None
        if settings.redis_cluster:  # a plain connection all the same: see subscribe_forever
            cluster = app.ctx.redis
            alternates = lambda: [(n.host, int(n.port)) for n in cluster.get_nodes()]  # noqa: E731
        subs = None
        if app.ctx.keys.fanout_rooms:  # FANOUT_CHANNELS=rooms: only the channels our connections need
            subs = registry.subs = Subscriptions(app.ctx.keys, registry, app.ctx.redis,
                                                 unsub_delay_s=settings.fanout_unsub_delay_s,
                                                 ready_timeout_s=settings.fanout_ready_timeout_s,
                                                 catch_up_max=settings.fanout_catch_up_max)
            app.ctx.fanout_writer = asyncio.create_task(subs.write_forever())
        app.ctx.fanout_task = asyncio.create_task(
            subscribe_forever(app.ctx.fanout_redis, app.ctx.keys, registry, ready, alternates, subs))
        app.ctx.heartbeat_task = asyncio.create_task(heartbeat_forever(app.ctx.registry, settings.ws_heartbeat_s))
        try:  # serve only once subscribed, so a message sent right after start-up is not missed
            await asyncio.wait_for(ready.wait(), 5.0)
        except asyncio.TimeoutError:
            log.warning("fan-out subscription not ready yet; continuing to retry in the background")

    @app.before_server_stop
    async def _stop(app: Sanic) -> None:
        registry = getattr(app.ctx, "registry", None)
        if registry is not None and registry.subs is not None:
            registry.subs.stop()
        for name in ("heartbeat_task", "fanout_writer", "fanout_task"):
            task = getattr(app.ctx, name, None)
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
        client = getattr(app.ctx, "fanout_redis", None)
        if client is not None:
            await client.aclose()
