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
from typing import Callable

from redis.asyncio import Redis
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
        room_id, user_id, version = _membership(target)
        if registry.note_membership(room_id, user_id, version):  # else stale: a newer change was applied
            registry.attach_user(user_id, room_id)
            registry.to_room(room_id, frame, exclude)
    elif kind == "l":
        room_id, user_id, version = _membership(target)
        if registry.note_membership(room_id, user_id, version):
            registry.to_room(room_id, frame, exclude)
            registry.detach_user(user_id, room_id)
    elif kind == "d":
        registry.to_room(target, frame, exclude)
        registry.forget_room(target)
    elif kind == "f":
        user_id, _, family = target.partition(":")
        registry.close_family(user_id, family, CLOSE_LOGGED_OUT, "logged out")
    else:
        log.warning("unknown event route %r", route)


def _membership(target: str) -> tuple[str, str, int]:
    """"<room>:<user>[:<version>]" -> (room, user, version); 0 = no version (always applies)."""
    parts = target.split(":")
    version = int(parts[2]) if len(parts) > 2 and parts[2] else 0
    return parts[0], parts[1], version


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
                           alternates: Callable[[], list[tuple[str, int]]] | None = None) -> None:
    """Receive events and dispatch them; reconnect with backoff when Redis goes away.

    The subscription is one dedicated connection read directly (SUBSCRIBE, then one reply
    per event): redis-py's PubSub.listen() adds a health check, a retry wrapper, a timeout
    context and a dict per message, which cost more than the delivery of a small event.

    `alternates` (Redis Cluster): the other nodes' (host, port). A cluster broadcasts every
    unsharded PUBLISH to all its nodes, so one plain connection to any node gets every event.
    After a loss the first try goes to REDIS_URL's node again, each failed try to the next node
    the cluster client knows, so a dead master does not stop the fan-out.
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
            await conn.send_command("SUBSCRIBE", channel)
            while True:  # the confirmation (a reply of another kind cannot come before it)
                reply = await conn.read_response()
                if isinstance(reply, list) and reply and reply[0] == "subscribe":
                    break
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
        app.ctx.registry = Registry()
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
        app.ctx.fanout_task = asyncio.create_task(
            subscribe_forever(app.ctx.fanout_redis, app.ctx.keys, app.ctx.registry, ready, alternates))
        app.ctx.heartbeat_task = asyncio.create_task(heartbeat_forever(app.ctx.registry, settings.ws_heartbeat_s))
        try:  # serve only once subscribed, so a message sent right after start-up is not missed
            await asyncio.wait_for(ready.wait(), 5.0)
        except asyncio.TimeoutError:
            log.warning("fan-out subscription not ready yet; continuing to retry in the background")

    @app.before_server_stop
    async def _stop(app: Sanic) -> None:
        for name in ("heartbeat_task", "fanout_task"):
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
