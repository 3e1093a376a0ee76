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

from app.keys import Keys
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
    from app.redis import connect_redis

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

    ledger = ledger if ledger is not None else Ledger()
    todo = [(r, k) for k in range(per_room) for r in rooms]
    sem = asyncio.Semaphore(concurrency)

    async def one(room_id: str, k: int) -> None:
        async with sem:
            msg, created = await accept_message(redis=ip.redis, keys=ip.keys, settings=ip.settings,
                                                room_id=room_id, sender_id=sender_id, body=f"{tag} {k}",
                                                rate_limit=False)
            assert created
            ledger.ack(msg)

    await asyncio.gather(*(one(r, k) for r, k in todo))
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
