"""Background jobs: the Dramatiq broker's configuration, and enqueueing a job by actor name.

The server never imports actor code (tasks/ imports app/, never the reverse): a job is a
Dramatiq message naming its actor and queue, put on the broker the worker consumes.
The broker is configured here once, so producers (server, scheduler, CLI) and the worker
agree on namespace, heartbeat and maintenance.

BROKER_URL chooses it (empty: REDIS_URL): `redis://...` is Dramatiq's RedisBroker (in the
deployment's namespace), `amqp://...` Dramatiq's RabbitmqBroker with publisher confirms (an
enqueue that returned is stored by RabbitMQ). RabbitMQ has no namespace: one vhost per
deployment (`amqp://user:pass@host:5672/<vhost>`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from functools import partial
from typing import Any

from urllib.parse import urlsplit

from dramatiq import Broker, Message, Middleware
from dramatiq.brokers.redis import RedisBroker

from app.store.keys import Keys
from app.settings import Settings

log = logging.getLogger("chat.jobs")

DEFAULT_QUEUE = "default"
# Every actor of the project consumes DEFAULT_QUEUE unless listed here (the queue a job is
# enqueued on must be one the worker consumes). `status` reports the depth of each queue.
ACTOR_QUEUES: dict[str, str] = {}

# Out of a million broker commands, how many also run Dramatiq's queue maintenance (requeue
# the fetched-but-unacked jobs of workers whose heartbeat is older than the timeout). The
# default (1,000) means an idle worker, polling about once a second, notices a dead peer
# only after many minutes. With no dead worker, maintenance is two ZRANGEBYSCOREs over
# tiny sorted sets, so every command runs it: a killed worker's jobs come back with the
# first command after BROKER_HEARTBEAT_TIMEOUT_S. (Its KEYS scan runs per dead worker,
# usually once: the worker leaves the heartbeat set as soon as it holds no fetched jobs.)
MAINTENANCE_CHANCE = 1_000_000


def queues() -> list[str]:
    """Every queue the project's actors use."""
    return sorted({DEFAULT_QUEUE, *ACTOR_QUEUES.values()})


class ForgetProducerHeartbeat(Middleware):
    """Remove this process's broker heartbeat after an enqueue unless the process consumes.

    Every broker command records a heartbeat; maintenance treats a heartbeat older than the
    timeout as a dead worker and runs `KEYS <namespace>:__acks__.<id>*` for it, a scan of
    the whole keyspace (which holds every room's cache). Processes that only enqueue (server,
    scheduler, CLI) go quiet all the time and would cause that scan again and again; they
    hold no fetched jobs, so there is nothing for maintenance to requeue on their behalf.
    """

    def __init__(self) -> None:
        self.consuming = False

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        self.consuming = True

    def after_enqueue(self, broker: Any, message: Message, delay: Any) -> None:
        if not self.consuming and isinstance(broker, RedisBroker):
            broker.client.zrem(f"{broker.namespace}:__heartbeats__", broker.broker_id)


RABBITMQ_SCHEMES = ("amqp", "amqps")


def broker_url(settings: Settings) -> str:
    """The job broker's URL: BROKER_URL, else REDIS_URL."""
    return settings.broker_url or settings.redis_url


def is_rabbitmq(url: str) -> bool:
    return urlsplit(url).scheme in RABBITMQ_SCHEMES


def build_broker(settings: Settings, middleware: list[Middleware] | None = None) -> Broker:
    """The project's broker (Redis or RabbitMQ, by BROKER_URL); `middleware=None` means
    Dramatiq's defaults (the worker)."""
    url = broker_url(settings)
    broker: Broker
    if is_rabbitmq(url):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker  # needs pika; only then imported

        logging.getLogger("pika").setLevel(logging.WARNING)  # an INFO line per connection opened/closed

        # Confirms: a job the server was told is enqueued survives a RabbitMQ restart
        # (Dramatiq declares its queues durable and publishes persistent messages).
        broker = RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True)
    else:
        broker = RedisBroker(
            url=url,
            namespace=Keys(settings.redis_prefix).dramatiq_namespace(),
            heartbeat_timeout=settings.broker_heartbeat_timeout_s * 1000,
            maintenance_chance=MAINTENANCE_CHANCE,
            middleware=middleware,
        )
    broker.add_middleware(ForgetProducerHeartbeat())
    return broker


def queue_depths(broker: Broker) -> dict[str, dict[str, int]]:
    """queue -> {"ready", "delayed", "dead"} job counts, on either broker (synchronous)."""
    out: dict[str, dict[str, int]] = {}
    if isinstance(broker, RedisBroker):
        ns = broker.namespace
        pipe = broker.client.pipeline(transaction=False)
        for q in queues():
            # <ns>:<q> lists ready job ids; .DQ is the delay queue (retries), .XQ the dead letters.
            pipe.llen(f"{ns}:{q}")
            pipe.hlen(f"{ns}:{q}.DQ.msgs")
            pipe.zcard(f"{ns}:{q}.XQ")
        values = pipe.execute()
        for i, q in enumerate(queues()):
            out[q] = dict(zip(("ready", "delayed", "dead"), map(int, values[3 * i:3 * i + 3])))
        return out
    for q in queues():
        ready, delayed, dead = broker.get_queue_message_counts(q)  # type: ignore[attr-defined]
        out[q] = {"ready": ready, "delayed": delayed, "dead": dead}
    return out


class Producer:
    """A broker that only enqueues (no middleware, no actors), built on first use.

    One per process, owned by its Resources (app/resources.py): the server's backlog trigger
    and uploads enqueue through it without opening a Redis connection per job.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._broker: Broker | None = None
        self._lock = threading.Lock()  # enqueues run in executor threads
        # The backlog trigger's rooms not yet queued (insertion-ordered, a room once), and the
        # one task that queues them as flush_rooms jobs (see trigger_flush).
        self._flush_rooms: dict[str, None] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_wake: asyncio.Event | None = None
        self._closing = False

    def broker(self) -> Broker:
        with self._lock:
            if self._broker is None:
                self._broker = build_broker(self.settings, middleware=[])
            return self._broker

    def enqueue_sync(self, actor_name: str, *args: Any) -> Message:
        """Enqueue from synchronous code (blocks on one broker round trip)."""
        return self.broker().enqueue(job(actor_name, *args))

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """The job queues' depths (GET /metrics, `make status`); blocks on the broker."""
        broker = self.broker()
        with self._lock:  # RabbitMQ: one channel per thread, but declares must not interleave
            return queue_depths(broker)

    async def enqueue(self, actor_name: str, *args: Any) -> None:
        """Enqueue from async code: the broker's client is synchronous, so it runs in a thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, partial(self.enqueue_sync, actor_name, *args))

    def trigger_flush(self, room_id: str) -> None:
        """Ask the worker to flush this room soon (the accept path's backlog trigger; never awaited).

        Rooms triggered within FLUSH_COALESCE_MS of the first go out together, FLUSH_JOB_ROOMS
        per `flush_rooms` job, from one background task: one executor call and one Dramatiq
        message per window instead of one of each per room (at 1,000 msgs/s the bench stack's
        ~33 room runs a second each paid the worker's fetch and ack and the server's executor
        hop). A full job's worth goes at once. If the enqueue fails it is only logged: the
        rooms are in the pending set, so the periodic flush_pending finds them; each room's
        flush_queued key (set by the accept script) still keeps it from being triggered twice.
        """
        self._flush_rooms[room_id] = None
        if self._flush_task is None:
            # Made with its task, on the loop running now (an Event binds to its first loop).
            self._flush_wake = asyncio.Event()
            self._flush_task = asyncio.get_running_loop().create_task(self._queue_flushes(self._flush_wake))
        if len(self._flush_rooms) >= self.settings.flush_job_rooms and self._flush_wake is not None:
            self._flush_wake.set()

    async def _queue_flushes(self, wake: asyncio.Event) -> None:
        """trigger_flush's task: wait out the window, queue what gathered, until nothing is left."""
        size = self.settings.flush_job_rooms
        window = self.settings.flush_coalesce_ms / 1000
        loop = asyncio.get_running_loop()
        try:
            while self._flush_rooms:
                if not self._closing and len(self._flush_rooms) < size:
                    try:
                        await asyncio.wait_for(wake.wait(), window)
                    except asyncio.TimeoutError:
                        pass
                wake.clear()
                rooms = list(self._flush_rooms)
                self._flush_rooms.clear()
                chunks = [rooms[i:i + size] for i in range(0, len(rooms), size)]
                try:
                    await loop.run_in_executor(None, partial(self._send_flush_jobs, chunks))
                except Exception:  # noqa: BLE001 - see trigger_flush
                    log.warning("could not enqueue flush_rooms for %d rooms (the periodic flush will)",
                                len(rooms), exc_info=True)
        finally:
            # No await between the emptiness check above and this: a trigger arriving later
            # starts a new task.
            self._flush_task = self._flush_wake = None

    def _send_flush_jobs(self, chunks: list[list[str]]) -> None:
        broker = self.broker()
        for chunk in chunks:
            broker.enqueue(job("flush_rooms", chunk))

    async def aclose(self) -> None:
        """Let background enqueues finish (a send's trigger is not dropped at shutdown: the
        rooms gathered for the next flush job go now), then close."""
        self._closing = True
        if self._flush_task is not None:
            if self._flush_wake is not None:
                self._flush_wake.set()
            await asyncio.gather(self._flush_task, return_exceptions=True)
        self.close()
        self._closing = False  # usable again (the broker is rebuilt on next use), as before

    def close(self) -> None:
        with self._lock:
            broker, self._broker = self._broker, None
        if broker is not None:
            broker.close()
            if isinstance(broker, RedisBroker):
                broker.client.connection_pool.disconnect()  # RedisBroker.close leaves its sockets open


def job(actor_name: str, *args: Any) -> Message:
    """A Dramatiq message for `actor_name`; actors take ids (or lists of ids), so args are JSON."""
    return Message(queue_name=ACTOR_QUEUES.get(actor_name, DEFAULT_QUEUE), actor_name=actor_name,
                   args=args, kwargs={}, options={})


def enqueue_sync(settings: Settings, actor_name: str, *args: Any) -> None:
    """Enqueue once from a process without Resources (CLI, scheduler tools, tests): a broker
    of its own, closed after."""
    producer = Producer(settings)
    try:
        producer.enqueue_sync(actor_name, *args)
    finally:
        producer.close()


async def enqueue(settings: Settings, actor_name: str, *args: Any) -> None:
    """enqueue_sync from async code, in a thread."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, partial(enqueue_sync, settings, actor_name, *args))


async def enqueue_flush_room(settings: Settings, room_id: str) -> None:
    """Ask the worker to flush one room now (one-shot broker; the accept path uses its Producer)."""
    await enqueue(settings, "flush_room", room_id)
