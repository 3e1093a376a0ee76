"""What the fault tests share: users and rooms through the real API, the real accept script
in-process against the test's own Redis, and the ledger that compares what was acked with
what PostgreSQL holds."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

import asyncpg
import httpx
from redis.asyncio import Redis

from app.store.keys import Keys
from app.settings import Settings
from tests.factories import TestUser, make_room, make_user


def users_and_rooms(base_url: str, n_rooms: int, n_users: int = 1) -> tuple[list[TestUser], list[dict[str, Any]]]:
    """`n_users` users (the first owns every room, all are members of each)."""
    with httpx.Client(base_url=base_url, timeout=30) as api:
        users = [make_user(api) for _ in range(n_users)]
        rooms = [make_room(api, users[0], member_ids=[u.id for u in users[1:]]) for _ in range(n_rooms)]
    return users, rooms


@dataclass
class InProc:
    """The accept path in this process, against the test's Redis and PostgreSQL."""

    redis: Redis
    keys: Keys
    settings: Settings


@asynccontextmanager
async def inproc(settings: Settings) -> AsyncIterator[InProc]:
    from app.db import close_db, init_db
    from app.store.client import connect_redis

    await init_db(settings.database_url, 4)  # the accept path rebuilds lost Redis state from PG
    redis = connect_redis(settings.redis_url)
    try:
        yield InProc(redis, Keys(settings.redis_prefix), settings)
    finally:
        await redis.aclose()
        await close_db()


@dataclass
class Ledger:
    """Every acknowledged message: id -> (room_id, seq)."""

    acked: dict[str, tuple[str, int]] = field(default_factory=dict)
    failed: int = 0  # sends that got no ack (an error the client saw; it may retry)

    def ack(self, message: dict[str, Any]) -> None:
        self.acked[message["id"]] = (message["room_id"], int(message["seq"]))

    def by_room(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for room, seq in self.acked.values():
            out[room].append(seq)
        return out


async def fill(ip: InProc, rooms: Iterable[str], sender_id: str, per_room: int, *,
               concurrency: int = 2000, ledger: Ledger | None = None, tag: str = "m") -> Ledger:
    """`per_room` messages into each room through app.messages.accept_message (the real Lua
    script), `concurrency` sends in flight at once (the accept batcher pipelines them)."""
    from app.messages import accept_message
    from app.resources import Resources

    res = Resources.build(ip.settings, ip.redis, ip.keys)
    ledger = ledger if ledger is not None else Ledger()
    todo = [(r, k) for k in range(per_room) for r in rooms]
    sem = asyncio.Semaphore(concurrency)

    async def one(room_id: str, k: int) -> None:
        async with sem:
            msg, created = await accept_message(res, room_id=room_id, sender_id=sender_id, body=f"{tag} {k}",
                                                rate_limit=False)
            assert created
            ledger.ack(msg)

    try:
        await asyncio.gather(*(one(r, k) for r, k in todo))
    finally:
        await res.close()
    return ledger


async def pg_messages(db_url: str) -> list[tuple[str, str, int]]:
    """(id, room_id, seq) of every message row."""
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT id::text, room_id::text, seq FROM messages")
    finally:
        await conn.close()
    return [(r[0], r[1], int(r[2])) for r in rows]


async def pg_count(db_url: str) -> int:
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM messages"))
    finally:
        await conn.close()


@dataclass
class Verdict:
    acked: int
    in_pg: int
    lost: list[str]
    duplicated: list[str]  # message ids stored more than once
    gaps: dict[str, list[int]]  # room -> missing seqs between 1 and its max

    def line(self) -> str:
        return (f"acked={self.acked} in_postgres={self.in_pg} lost={len(self.lost)} "
                f"duplicated={len(self.duplicated)} rooms_with_gaps={len(self.gaps)}")


def verdict(ledger: Ledger, rows: list[tuple[str, str, int]], rooms: Iterable[str] | None = None) -> Verdict:
    ids = Counter(r[0] for r in rows)
    lost = [mid for mid in ledger.acked if mid not in ids]
    dup = [mid for mid, n in ids.items() if n > 1]
    per_room: dict[str, set[int]] = defaultdict(set)
    for _, room, seq in rows:
        per_room[room].add(seq)
    gaps = {}
    for room in (rooms if rooms is not None else per_room):
        seqs = per_room.get(room, set())
        if seqs:
            missing = sorted(set(range(1, max(seqs) + 1)) - seqs)
            if missing:
                gaps[room] = missing[:20]
    return Verdict(len(ledger.acked), len(rows), lost, dup, gaps)


def report(title: str, **figures: Any) -> None:
    """One line of what the test measured (shown with -s; docs/reliability.md quotes them)."""
    parts = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[fault] {title}: {parts}", flush=True)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


@dataclass
class Sent:
    """One HTTP send as the client saw it."""

    t0: float  # monotonic start
    t1: float  # monotonic end (answer or client-side error)
    status: int  # HTTP status; 0 = no HTTP answer (connection error or client timeout)
    error: str = ""

    @property
    def latency(self) -> float:
        return self.t1 - self.t0


@dataclass
class Load:
    """Concurrent senders posting to rooms over HTTP until stopped."""

    base_url: str
    users: list[TestUser]
    room_ids: list[str]
    senders: int = 8
    client_timeout_s: float = 60.0  # far above any server-side timeout: a hang shows as latency
    pause_s: float = 0.0  # between one sender's requests (0: as fast as answers come)
    ledger: Ledger = field(default_factory=Ledger)
    sent: list[Sent] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tag: str = "load"
    acked_at: dict[str, float] = field(default_factory=dict)  # message id -> monotonic time of its ack
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _sender(self, i: int) -> None:
        user = self.users[i % len(self.users)]
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.client_timeout_s,
                                     limits=limits, headers=user.headers) as client:
            k = 0
            while not self.stop.is_set():
                room = self.room_ids[(i + k) % len(self.room_ids)]
                k += 1
                t0 = time.monotonic()
                try:
                    resp = await client.post(f"/rooms/{room}/messages", json={"body": f"{self.tag} {i}.{k}"})
                except httpx.HTTPError as exc:
                    self.sent.append(Sent(t0, time.monotonic(), 0, type(exc).__name__))
                    self.ledger.failed += 1
                    await asyncio.sleep(0.05)
                    continue
                t1 = time.monotonic()
                if resp.status_code == 201:
                    msg = resp.json()
                    self.ledger.ack(msg)
                    self.acked_at[msg["id"]] = t1
                    self.sent.append(Sent(t0, t1, 201))
                else:
                    self.ledger.failed += 1
                    code = ""
                    try:
                        code = resp.json().get("error", {}).get("code", "")
                    except ValueError:
                        code = resp.text[:80]
                    self.sent.append(Sent(t0, t1, resp.status_code, str(code)))
                    await asyncio.sleep(0.05)  # a client backs off on errors
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)

    def start(self) -> "Load":
        self._tasks = [asyncio.create_task(self._sender(i)) for i in range(self.senders)]
        return self

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks)

    def acks_after(self, t: float) -> int:
        return sum(1 for s in self.sent if s.status == 201 and s.t1 >= t)

    async def until_acked(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ledger.acked) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.ledger.acked)} of {n} acks in {timeout}s "
                                     f"(last answers: {[(s.status, s.error) for s in self.sent[-5:]]})")
            await asyncio.sleep(0.01)

    def statuses(self) -> dict[str, int]:
        c = Counter(f"{s.status}{':' + s.error if s.error else ''}" for s in self.sent)
        return dict(sorted(c.items()))


async def tick(settings: Settings, redis: Redis, keys: Keys) -> int:
    """One scheduler tick, as periodiq does it: a `flush_pending` job for the worker (which checks
    Redis for a restart, then queues flush_room for every pending room). Tests that do not wait
    for the minute-granular scheduler call it where a tick would come. Returns the rooms pending."""
    from app.jobs import enqueue_sync

    enqueue_sync(settings, "flush_pending")
    return int(await redis.scard(keys.pending_rooms()))


@dataclass
class Drain:
    seconds: float | None  # None: not drained within the timeout
    ticks: int  # scheduler ticks it took (by hand, see tick())


async def drained(redis: Redis, keys: Keys, db_url: str, want_ids: Iterable[str], timeout: float,
                  settings: Settings | None = None, tick_every_s: float = 0.0) -> Drain:
    """Wait until no room is pending and every id in `want_ids` is in PostgreSQL.

    With `settings`, stands in for the scheduler: one tick at once, then one every
    `tick_every_s` (0: only the first). Never raises: the caller reports its figures, then fails."""
    want = set(want_ids)
    start = time.monotonic()
    ticks = 0
    next_tick = start
    while True:
        if settings is not None and time.monotonic() >= next_tick and (ticks == 0 or tick_every_s):
            await tick(settings, redis, keys)
            ticks += 1
            next_tick = time.monotonic() + tick_every_s
        pending = await redis.scard(keys.pending_rooms())
        if pending == 0:
            have = {r[0] for r in await pg_messages(db_url)}
            if want <= have:
                return Drain(time.monotonic() - start, ticks)
        if time.monotonic() - start > timeout:
            return Drain(None, ticks)
        await asyncio.sleep(0.2)


async def missing_acks(redis: Redis, keys: Keys, ledger: Ledger, rows: list[tuple[str, str, int]],
                       acked_at: dict[str, float], t_kill: float) -> list[dict[str, Any]]:
    """Where each acked message that PostgreSQL lacks went: still in its room's Redis stream (the
    flush did not get to it), or gone from Redis (Redis lost an acknowledged write), and whether
    its seq was handed out again. `ack_s_before_kill`: how long before the kill its ack came."""
    in_pg = {r[0] for r in rows}
    pg_holder = {(r[1], r[2]): r[0] for r in rows}
    acked_holders: dict[tuple[str, int], list[str]] = defaultdict(list)
    for mid, slot in ledger.acked.items():
        acked_holders[slot].append(mid)
    out = []
    for mid, (room, seq) in ledger.acked.items():
        if mid in in_pg:
            continue
        entries = await redis.xrange(keys.room_log(room), min=str(seq), max=str(seq))
        in_redis = any(mid in str(fields) for _, fields in entries)
        out.append({"id": mid, "room": room, "seq": seq, "in_redis": in_redis,
                    "seq_reused": [m for m in acked_holders[(room, seq)] if m != mid],
                    "pg_holder": pg_holder.get((room, seq)),
                    "ack_s_before_kill": round(t_kill - acked_at[mid], 3) if mid in acked_at else None})
    return out
