"""The per-room message cache in Redis: the accept pipeline, the history read, counter seeding.

The scripts are app/store/lua/{accept,read,seed,forget_cid}.lua (loaded by app/store/scripts.py).

Layout (see app/store/keys.py): `seq` counter, `log` stream with entry ids "<seq>-0"
and field "m" holding the message JSON exactly as the API renders it, `flushed`
(written by the worker), `members` set, `cid:<sender>:<client_id>` keys (the seq a client_id produced),
`flush_queued`, the room's pending set (app/store/keys.py: global on a single node, the
slot's on a cluster) and the events channel.

Accepting a message is ONE script call (one round trip, atomic): member check,
idempotency, rate limit, seq allocation, append, publish. Because the seq is
allocated, appended and published inside one script, concurrent senders in
any number of processes get gap-free seqs, and every subscriber sees a room's
messages published in seq order.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from redis.asyncio import Redis
from redis.exceptions import (AskError, ClusterDownError, ConnectionError as RedisConnectionError, DataError,
                              MaxConnectionsError, MovedError, NoScriptError, RedisClusterException, ResponseError,
                              TimeoutError as RedisTimeoutError, TryAgainError)

from app.settings import Settings
from app.store import scripts
from app.store.keys import Keys
from app.store.scripts import Script

# Result codes of the accept script (app/store/lua/accept.lua).
OK, DUPLICATE, MEMBERS_MISSING, NOT_MEMBER, RATE_LIMITED, SEQ_MISSING = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class AcceptPolicy:
    """The accept script's per-process constants, built once from settings (app/resources.py)."""

    rate_limit: int  # sends per window and sender (0 = off)
    rate_window_ms: int
    idempotency_ttl_s: int  # how long a client_id is remembered
    backlog_threshold: int  # unflushed messages that ask the worker for a flush now
    flush_queued_ttl_s: int  # how long that request blocks the next one
    mention_ttl_s: int = 30 * 86400  # a mention key's life: RETENTION_DAYS, its message's own

    @classmethod
    def from_settings(cls, s: Settings) -> "AcceptPolicy":
        return cls(rate_limit=s.rate_messages, rate_window_ms=s.rate_messages_window_s * 1000,
                   idempotency_ttl_s=s.idempotency_ttl_s, backlog_threshold=s.flush_backlog_threshold,
                   flush_queued_ttl_s=max(s.flush_lease_s, 10), mention_ttl_s=s.retention_days * 86400)


def _seq_of(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


# redis-py's send_packed_command wraps every write in asyncio.wait_for (a task per call) and
# read_response every reply in its own timeout (a timer per call) when a socket timeout is set:
# about 6% of a server's CPU at 1,500 msgs/s (py-spy, the bench's realtime load). The batcher
# writes the packed batch itself, waits for the transport only when it kept unsent bytes, and
# reads a batch's replies under one deadline: REDIS_SOCKET_TIMEOUT_S bounds the write and the
# whole batch's replies, and a stalled Redis still fails the batch (503), never hangs it.
async def _write_packed(conn: Any, data: bytes) -> None:
    if not conn.is_connected:
        await conn.connect_check_health(check_health=False)
    writer = conn._writer
    try:
        writer.write(data)
        if writer.transport.get_write_buffer_size():  # the kernel did not take it all: flow control
            async with asyncio.timeout(conn.socket_timeout):
                await writer.drain()
    except TimeoutError:  # asyncio's (the builtin), not redis-py's
        raise RedisTimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc


class _replies_within:
    """`async with`: the replies read inside must all come within the connection's socket
    timeout; past it the connection is dropped and redis-py's TimeoutError raised, as its own
    per-reply timeout did."""

    __slots__ = ("conn", "timeout")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.timeout: Any = None

    async def __aenter__(self) -> None:
        self.timeout = asyncio.timeout(self.conn.socket_timeout)
        await self.timeout.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        try:
            return await self.timeout.__aexit__(*exc)
        except TimeoutError:
            await self.conn.disconnect(nowait=True)
            raise RedisTimeoutError(f"Timeout reading from {self.conn._host_error()}") from None


class Batcher:
    """Runs accept scripts for one Redis client on a connection of its own, pipelined.

    Concurrent sends of a process share round trips: while one batch is on the wire the
    next ones queue, and go out together in one write (Redis runs them in order, each
    atomically). No automatic retry: the script is not idempotent without a client_id,
    and a silent replay after a lost reply would append the same message twice. A send
    whose reply is lost fails (503 / error frame) and the client retries with its client_id.

    The commands are packed by hand as RESP (`_pack_evalshas`) and written on the held connection
    without redis-py's per-call health check coroutine (its idle test is inlined); a write or
    read error disconnects the connection, so the next batch reconnects.

    One drain loop per batcher and event loop, parked on a future while the queue is empty
    (a task per batch cost a task creation and its scheduling on every round trip).
    One batcher per Redis client, owned by the process's Resources (app/resources.py).
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn: Any = None
        self.queue: list[tuple[Script, int, list[Any], asyncio.Future[Any]]] = []
        self.task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while the loop waits for work

    async def call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.queue.append((script, len(keys), [*keys, *args], fut))
        wake = self._wake
        if wake is not None and wake.get_loop() is loop:
            self._wake = None
            if not wake.done():
                wake.set_result(None)
        elif self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self._wake = None  # a loop parked on another (closed) event loop is abandoned
            self.task = loop.create_task(self._drain())
        return await fut

    async def close(self) -> None:
        """Stop the drain loop and hand the held connection back to the pool."""
        task, self.task = self.task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn, self.conn = self.conn, None
        if conn is not None:
            await self.pool.release(conn)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.queue:
                    self._wake = wake = loop.create_future()
                    await wake
                    continue
                batch, self.queue = self.queue, []
                try:
                    await self._run(batch)
                except BaseException as exc:  # noqa: BLE001 - fail the batch, never hang a sender
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(str(exc)))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            self._wake = None
            for *_, fut in self.queue:  # queued while the loop was being cancelled
                if not fut.done():
                    fut.set_exception(RedisConnectionError("accept batcher stopped"))
            self.queue = []

    async def _run(self, batch: list[tuple[Script, int, list[Any], asyncio.Future[Any]]]) -> None:
        if self.conn is None:
            self.conn = await self.pool.get_connection()  # held for good; pool.disconnect() closes it
        conn = self.conn
        try:
            # The health check's own test, inline: a PING only after the connection sat idle
            # (redis-py's check_health coroutine ran on every batch, for nothing in the hot path).
            if conn.is_connected and conn.health_check_interval \
                    and asyncio.get_running_loop().time() > conn.next_health_check:
                await conn.check_health()
            await _write_packed(conn, _pack_evalshas(batch))
        except BaseException:
            await conn.disconnect()  # the stream's state is unknown; the next batch reconnects
            raise
        missing: list[tuple[Script, int, list[Any], asyncio.Future[Any]]] = []
        # Each reply goes to its sender as soon as it is read: a script that ran is answered even
        # when a later reply of the batch is an error or never comes (the caller fails only the
        # futures still pending). An error reply (OOM, READONLY, a script error) fails only its own.
        async with _replies_within(conn):
            for item in batch:
                try:
                    reply = await conn.read_response(timeout=math.inf)  # the batch's one deadline
                except ResponseError as err:
                    reply = err
                except BaseException:
                    await conn.disconnect()
                    raise
                fut = item[3]
                if fut.done():
                    continue
                if isinstance(reply, NoScriptError):  # not run at all: load it and run again
                    missing.append(item)
                elif isinstance(reply, Exception):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        if missing:
            for source in {item[0].source for item in missing}:
                await conn.send_command("SCRIPT", "LOAD", source)
                await conn.read_response()
            self.queue[:0] = missing


class ClusterBatcher(Batcher):
    """The accept batcher of a RedisCluster client: each batch is split by the node owning each
    script's first key (the room's slot), and each node's share goes out as one pipelined write
    on a connection of that node, all nodes at once. The same contract as the single-node
    batcher: no automatic retry (redis-py's cluster pipeline re-sends a whole pipeline after a
    connection error, which could append a message twice), each reply to its own sender, an
    error reply fails only its own message. A script that did not run because its slot moved
    (MOVED/ASK/TRYAGAIN) or the cluster is failing over runs once more through the cluster
    client, which follows the redirect; NOSCRIPT loads the script on that node and queues again.
    Uses the client's slot map and node pools (`nodes_manager`, `acquire_connection`, `_initialize`)
    as redis-py 8.1 (requirements/base.txt pins it) has them; tests/app/store/test_cluster_accept.py
    runs this on a real cluster, a reshard included.
    """

    def __init__(self, cluster: Any) -> None:
        super().__init__(None)
        self.cluster = cluster
        self._redirects: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, batch: list[tuple[Script, int, list[Any], asyncio.Future[Any]]]) -> None:
        cluster = self.cluster
        if cluster._initialize:  # first use, or a node failed: (re)read the slot map
            await cluster.initialize()
        nodes = cluster.nodes_manager
        groups: dict[str, tuple[Any, list[tuple[Script, int, list[Any], asyncio.Future[Any]]]]] = {}
        for item in batch:
            try:
                node = nodes.get_node_from_slot(cluster.keyslot(item[2][0]))
            except RedisClusterException as exc:  # a slot no master serves: only its sends fail
                if not item[3].done():
                    item[3].set_exception(exc)
                continue
            groups.setdefault(node.name, (node, []))[1].append(item)
        outcomes = await asyncio.gather(*(self._run_node(node, items) for node, items in groups.values()),
                                        return_exceptions=True)
        for (node, items), outcome in zip(groups.values(), outcomes):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)) \
                        and not isinstance(outcome, MaxConnectionsError):  # a full pool is ours, not the node's
                    # As redis-py does on a node failure: try that node last, re-read the slot map.
                    nodes.move_node_to_end_of_cached_nodes(node.name)
                    cluster._initialize = True
                err = outcome if isinstance(outcome, Exception) else RedisConnectionError(str(outcome))
                for *_, fut in items:
                    if not fut.done():
                        fut.set_exception(err)

    async def _run_node(self, node: Any, items: list[tuple[Script, int, list[Any], asyncio.Future[Any]]]) -> None:
        conn = node.acquire_connection()
        try:
            try:
                await _write_packed(conn, _pack_evalshas(items))
            except BaseException:
                await conn.disconnect()
                raise
            missing: list[tuple[Script, int, list[Any], asyncio.Future[Any]]] = []
            async with _replies_within(conn):
                for item in items:
                    try:
                        reply = await conn.read_response(timeout=math.inf)  # the batch's one deadline
                    except ResponseError as err:
                        reply = err
                    except BaseException:
                        await conn.disconnect()
                        raise
                    fut = item[3]
                    if fut.done():
                        continue
                    if isinstance(reply, NoScriptError):
                        missing.append(item)
                    elif isinstance(reply, (MovedError, AskError, TryAgainError, ClusterDownError)):
                        self._redirect(item)  # not run: the cluster client follows the new slot map
                    elif isinstance(reply, Exception):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
            if missing:
                for source in {item[0].source for item in missing}:
                    await conn.send_command("SCRIPT", "LOAD", source)
                    await conn.read_response()
                self.queue[:0] = missing
        finally:
            node.release(conn)

    def _redirect(self, item: tuple[Script, int, list[Any], asyncio.Future[Any]]) -> None:
        script, nkeys, argv, fut = item

        async def run() -> None:
            try:
                fut.set_result(await script(self.cluster, argv[:nkeys], argv[nkeys:]))
            except Exception as exc:  # noqa: BLE001 - the sender gets the error
                if not fut.done():
                    fut.set_exception(exc)

        task = asyncio.get_running_loop().create_task(run())
        self._redirects.add(task)
        task.add_done_callback(self._redirects.discard)


def make_batcher(redis: Any) -> Batcher:
    """The accept batcher for a client: pipelined on one connection, or split per cluster node."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(redis, RedisCluster):
        return ClusterBatcher(redis)
    return Batcher(redis.connection_pool)


def _pack_evalshas(batch: list[tuple[Script, int, list[Any], asyncio.Future[Any]]]) -> bytes:
    """The batch's EVALSHA commands as one RESP buffer (redis-py's generic pack_commands and
    Encoder.encode cost ~3x as much); str args as UTF-8, ints in decimal, like its encoder."""
    out: list[bytes] = []
    add = out.append
    for script, nkeys, argv, _ in batch:
        add(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%d\r\n"
            % (len(argv) + 3, script.sha.encode(), len(str(nkeys)), nkeys))
        for arg in argv:
            kind = type(arg)
            if kind is str:
                b = arg.encode()
            elif kind is int:
                b = b"%d" % arg
            elif kind is bytes:
                b = arg
            elif kind is float:
                b = repr(arg).encode()
            else:
                raise DataError(f"Invalid input of type {kind.__name__!r} in an accept script call.")
            add(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


@dataclass(frozen=True)
class AcceptResult:
    code: int
    message: str = ""  # the message JSON (OK; DUPLICATE while the stream still holds it, else "")
    backlog: int = 0
    flush_queued: bool = False
    retry_ms: int = 0
    seq: int = 0  # DUPLICATE: the seq the client_id produced (-1: an old key, message given)


@dataclass(frozen=True)
class CacheRange:
    """What the read script saw, at one instant: the stream's first seq (None: stream empty),
    entries, the change overlay of the page's seq window and the room's change counter."""

    first_seq: int | None
    entries: list[tuple[int, str]]  # (seq, message JSON) in the requested direction
    overlay: dict[int, str] = field(default_factory=dict)  # seq -> latest state JSON (changed messages)
    version: int | None = None  # the room's `version` counter (None: missing)
    window: tuple[int, int] = field(default=(0, -1), compare=False)  # the seqs the overlay was read for (lo, hi inclusive)


async def accept(batcher: Batcher, keys: Keys, policy: AcceptPolicy, *, room_id: str, sender_id: str | None,
                 client_id: str | None, before_seq: str, after_seq: str, event: tuple[str, str],
                 rate_limited: bool, mentions: Sequence[str] = ()) -> AcceptResult:
    """Run the accept script once, in the batcher's next pipelined write.

    The message JSON is before_seq + seq + after_seq; the published payload is
    event[0] + message JSON + event[1] (app/realtime/events.message_payload_parts).
    `mentions`: the lowercased usernames the message @mentions (app/mentions.py), counted
    per reader in their `mnt:<name>` keys; the sender's read marker moves to the new seq."""
    sender = sender_id or ""
    script_keys = [
        keys.room_members(room_id), keys.script_rate("msg", room_id, sender or "-"),
        keys.room_client_id(room_id, sender or "-", client_id or "-"),
        keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id),
        keys.pending_set(room_id), keys.room_flush_queued(room_id),
        keys.room_reads(room_id), keys.room_reads_dirty(room_id),
        *(keys.room_mentions(room_id, name) for name in mentions),
    ]
    args = [sender, policy.rate_limit if rate_limited and sender else 0, policy.rate_window_ms,
            policy.idempotency_ttl_s, before_seq, after_seq, event[0], event[1], room_id, keys.room_channel(room_id),
            policy.backlog_threshold, policy.flush_queued_ttl_s, "1" if client_id else "", policy.mention_ttl_s]
    res: list[Any] = await batcher.call(scripts.ACCEPT, script_keys, args)
    code = int(res[0])
    if code == OK:
        return AcceptResult(OK, res[1], int(res[2]), bool(int(res[3])))
    if code == DUPLICATE:
        return AcceptResult(DUPLICATE, res[1], seq=int(res[2]))
    if code == RATE_LIMITED:
        return AcceptResult(RATE_LIMITED, retry_ms=int(res[1]))
    return AcceptResult(code)


async def forget_client_id(redis: Redis, keys: Keys, room_id: str, sender_id: str | None, client_id: str | None,
                           seq: int) -> None:
    """Forget a client_id whose message is neither in the stream nor in PostgreSQL."""
    await scripts.FORGET_CID(redis, [keys.room_client_id(room_id, sender_id or "-", client_id or "-")], [str(seq)])


async def seed_seq(redis: Redis, keys: Keys, room_id: str, pg_max: int) -> int:
    """Re-create a lost counter (no-op when it exists); returns its value."""
    return int(await scripts.SEED(redis, [keys.room_seq(room_id), keys.room_log(room_id), keys.room_flushed(room_id)],
                           [int(pg_max)]))


async def read(redis: Redis, keys: Keys, room_id: str, *, ascending: bool, lo: int, hi: int | None,
               count: int, member: str | None = None) -> CacheRange | None:
    """Entries with lo <= seq <= hi (hi None = no bound), at most `count`, plus the stream's first
    seq, the overlay for the seqs such a page can hold (seqs are gap-free: the `count` seqs from
    lo up, or down from hi / the room's last seq) and the room's version counter.

    `member`: read only if the room's loaded member set holds this user, else None (nothing
    read; the caller runs the full check, app/access.py): a check and a read in one round trip."""
    lo = max(lo, 0)
    if ascending:
        win_lo, win_hi = lo, lo + count - 1 if hi is None else min(hi, lo + count - 1)
    else:
        win_lo, win_hi = (lo, "+") if hi is None else (max(lo, hi - count + 1), hi)
    args = ["asc" if ascending else "desc", lo, "+" if hi is None else hi, count, win_lo, win_hi, count]
    names = [keys.room_log(room_id), keys.room_state(room_id), keys.room_version(room_id), keys.room_seq(room_id)]
    if member is not None:
        names.append(keys.room_members(room_id))
        args.append(member)
    got = await scripts.READ(redis, names, args)
    if len(got) == 1:  # {"!"}: not a member the set knows
        return None
    first, flat, over, version, wlo, whi = got
    entries = [(_seq_of(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
    overlay = {int(over[i]): over[i + 1] for i in range(0, len(over), 2)}
    return CacheRange(_seq_of(first) if first else None, entries, overlay, int(version) if version else None,
                      (int(wlo), int(whi)))


async def counters(redis: Redis, keys: Keys, room_ids: list[str]) -> list[int | None]:
    """Each room's seq counter (None where Redis has lost it), in one pipelined round trip."""
    if not room_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for rid in room_ids:
            pipe.get(keys.room_seq(rid))
        values = await pipe.execute()
    return [int(v) if v is not None else None for v in values]
