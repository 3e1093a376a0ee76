"""SIGSTOP Redis for 10 s during HTTP ingest, then SIGCONT: the server answers 503 within its
Redis timeout instead of hanging, recovers when Redis does, and loses no acked message.

A stopped process still has its listening socket: TCP connects succeed and requests sit in
the kernel's buffers, so only the client-side timeouts (REDIS_CONNECT_TIMEOUT_S,
REDIS_SOCKET_TIMEOUT_S) can end the wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.store.keys import Keys
from app.store.client import connect_redis
from tests.faults._kit import Clock, Load, drained, pg_messages, report, users_and_rooms, verdict

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 5
STALL_S = 10.0
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
# A request may pay one connect and one read timeout, plus the server's own work.
ANSWER_BOUND_S = SOCKET_TIMEOUT_S + CONNECT_TIMEOUT_S + 1.5


@pytest.mark.timeout(150)
async def test_redis_stalled_gives_prompt_503s_then_recovers_losing_nothing(stack) -> None:
    clock = Clock()
    env = {"REDIS_SOCKET_TIMEOUT_S": str(SOCKET_TIMEOUT_S), "REDIS_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
           "FLUSH_BACKLOG_THRESHOLD": "100"}
    server, base = stack.server(**env)
    worker = stack.worker(**env)
    users, rooms = users_and_rooms(base, ROOMS, n_users=4)
    room_ids = [r["id"] for r in rooms]
    settings = stack.settings(**env)

    load = Load(base, users, room_ids, senders=8, client_timeout_s=60).start()
    await load.until_acked(500)
    stack.redis.pause()
    t_stop = time.monotonic()
    try:
        await asyncio.sleep(STALL_S)
    finally:
        stack.redis.resume()
    t_cont = time.monotonic()
    await load.until_acked(len(load.ledger.acked) + 300, timeout=30)
    await load.finish()

    # Sent while Redis was stopped, early enough that the answer is due before SIGCONT.
    during = [s for s in load.sent if t_stop + 0.05 <= s.t0 <= t_cont - ANSWER_BOUND_S]
    started_during = [s for s in load.sent if t_stop <= s.t0 < t_cont]
    after = [s for s in load.sent if s.t0 >= t_cont and s.status == 201]
    first_ok_after = min(s.t1 for s in after) - t_cont if after else None
    worst = max(load.sent, key=lambda s: s.latency)
    first_503 = min((s.t1 for s in load.sent if s.status == 503 and s.t1 >= t_stop), default=None)

    redis = connect_redis(stack.redis.url)
    try:
        # The backlog trigger of a send that timed out is lost with its reply, and a flush whose
        # lease SET timed out leaves a lease Redis still applies when it wakes up (the room
        # waits FLUSH_LEASE_S): the scheduler's ticks (here by hand, every 2 s) pick them up.
        drain = await drained(redis, Keys(settings.redis_prefix), settings.database_url,
                              load.ledger.acked, timeout=60, settings=settings, tick_every_s=2.0)
    finally:
        await redis.aclose()
    rows = await pg_messages(settings.database_url)
    v = verdict(load.ledger, rows, room_ids)
    report("redis SIGSTOP 10 s during ingest", load=f"8 HTTP senders, {ROOMS} rooms",
           stall_s=STALL_S, socket_timeout_s=SOCKET_TIMEOUT_S, answer_bound_s=ANSWER_BOUND_S,
           requests_during_stall=len(started_during), due_during_stall=len(during),
           answered_503_during_stall=sum(1 for s in started_during if s.status == 503),
           first_503_after_stop_s=(first_503 - t_stop) if first_503 else None,
           worst_latency_s=worst.latency, worst_status=worst.status,
           first_201_after_cont_s=first_ok_after, acked=v.acked, in_pg=v.in_pg,
           unacked_but_stored=v.in_pg - v.acked, lost=len(v.lost), duplicated=len(v.duplicated),
           rooms_with_gaps=len(v.gaps), drain_s=drain.seconds, ticks=drain.ticks,
           statuses=load.statuses(), total_s=clock())
    assert drain.seconds is not None, "the worker did not drain the rooms after Redis came back"
    assert started_during, "no request was sent while Redis was stopped"
    hung = [s for s in load.sent if s.latency > ANSWER_BOUND_S]
    assert hung == [], (f"{len(hung)} requests took longer than {ANSWER_BOUND_S}s "
                        f"(worst {worst.latency:.1f}s, status {worst.status}): the Redis timeouts do not hold")
    assert len(during) >= 8, f"each sender should have been answered several times in {STALL_S}s"
    assert all(s.status == 503 for s in during), \
        f"requests answered while Redis was stopped must be 503: {[(s.status, s.error) for s in during]}"
    assert first_ok_after is not None and first_ok_after < 5.0, "no recovery after SIGCONT"
    assert worker.alive() and server.alive()
    assert v.lost == [] and v.duplicated == [] and v.gaps == {}
