"""Membership races against real server processes: join/ban, join/leave and handshake/kick.

Each test runs 200 rounds, each on a fresh (user, room) pair, with the two racing requests
sent through two different server processes a few milliseconds apart. After each round
it asks what a user would notice:

- post: can the user still send to the room (HTTP, the real accept script)?
- read: does the user's socket still receive the room's new messages? Proven without a
  "nothing arrives" window: the owner sends to the room, then to a canary room the user is
  in; both events travel on one ordered channel, so once the canary message arrives, the
  room message has arrived before it or never will.

It also proves the overlap it relies on (the second request was sent before the first one
was answered) and prints every count it measured.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.env import TEST_ENV
from tests.factories import TestUser, make_room, make_user, unique
from tests.support import OwnServers, ServerProc
from tests.wsclient import WS

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROUNDS = 200
USERS, ROOMS = 20, 10  # USERS x ROOMS = ROUNDS fresh (user, room) pairs
MAX_DELAY_S = 0.006  # the second request leaves 0-6 ms after the first


@pytest.fixture(scope="module")
def servers(own_server: OwnServers) -> tuple[ServerProc, ServerProc]:
    """Two server processes sharing the session's PostgreSQL and Redis."""
    return own_server(name="races-1"), own_server(name="races-2")


@dataclass
class Cast:
    owner: TestUser
    users: list[TestUser]
    rooms: list[dict[str, Any]]
    canaries: dict[str, dict[str, Any]]  # user id -> a room of the owner and that user only


def cast(base_url: str) -> Cast:
    with httpx.Client(base_url=base_url, timeout=30) as api:
        owner = make_user(api)
        users = [make_user(api) for _ in range(USERS)]
        rooms = [make_room(api, owner) for _ in range(ROOMS)]
        canaries = {u.id: make_room(api, owner, is_private=True, member_ids=[u.id]) for u in users}
    return Cast(owner, users, rooms, canaries)


@dataclass
class Tally:
    rounds: int = 0
    overlapped: int = 0
    could_post: int = 0
    could_read: int = 0
    stale_redis: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def outcome(self, name: str) -> None:
        self.outcomes[name] = self.outcomes.get(name, 0) + 1

    def report(self, title: str) -> None:
        print(f"\n{title}: {self.rounds} rounds in {time.monotonic() - self.started:.1f}s, "
              f"{self.overlapped} overlapped, outcomes {self.outcomes}, "
              f"could post {self.could_post}, could read {self.could_read}, stale Redis set {self.stale_redis}")


async def reads_room(ws: WS, api: httpx.AsyncClient, owner: TestUser, room_id: str, canary_id: str) -> bool:
    """Does `ws` receive a message the owner sends to the room now? (canary-ordered, see above)"""
    tag = unique("probe")
    for rid, body in ((room_id, tag), (canary_id, f"canary {tag}")):
        resp = await api.post(f"/rooms/{rid}/messages", json={"body": body}, headers=owner.headers)
        assert resp.status_code == 201, resp.text
    seen = False
    while True:
        frame = await ws.recv_until(lambda f: f["type"] == "message", timeout=10)
        if frame["message"]["room_id"] == room_id and frame["message"]["body"] == tag:
            seen = True
        if frame["message"]["room_id"] == canary_id and frame["message"]["body"] == f"canary {tag}":
            return seen


async def posts_room(api: httpx.AsyncClient, user: TestUser, room_id: str) -> bool:
    resp = await api.post(f"/rooms/{room_id}/messages", json={"body": "still here?"}, headers=user.headers)
    assert resp.status_code in (201, 403, 404), resp.text
    return resp.status_code == 201


async def in_redis_set(redis: Redis, room_id: str, user_id: str) -> bool:
    from app.store.keys import Keys

    return bool(await redis.sismember(Keys(TEST_ENV["REDIS_PREFIX"]).room_members(room_id), user_id))


def pairs(c: Cast) -> list[tuple[TestUser, dict[str, Any]]]:
    out = [(u, r) for r in c.rooms for u in c.users]
    assert len(out) == ROUNDS
    return out


async def timed(coro: Any) -> tuple[Any, float]:
    res = await coro
    return res, time.monotonic()


async def later(delay: float, make: Any) -> tuple[Any, float]:
    await asyncio.sleep(delay)
    sent = time.monotonic()
    return await make(), sent


@pytest.mark.timeout(240)
async def test_join_ban_race_leaves_no_banned_user_reading_or_posting(
        servers: tuple[ServerProc, ServerProc], redis: Redis) -> None:
    one, two = servers
    c = cast(one.base_url)
    t = Tally()
    async with httpx.AsyncClient(base_url=one.base_url, timeout=30) as api1, \
            httpx.AsyncClient(base_url=two.base_url, timeout=30) as api2:
        sockets = {u.id: await WS.open((one if i % 2 else two).ws_url, u.access_token)
                   for i, u in enumerate(c.users)}
        for user, room in pairs(c):
            rid = room["id"]
            (joined, join_done), (banned, ban_sent) = await asyncio.gather(
                timed(api1.post(f"/rooms/{rid}/join", headers=user.headers)),
                later(random.uniform(0, MAX_DELAY_S), lambda: api2.delete(
                    f"/rooms/{rid}/members/{user.id}", params={"ban": "true"}, headers=c.owner.headers)))
            assert banned.status_code == 204, banned.text
            assert joined.status_code in (200, 403), joined.text  # 403 banned: the ban came first
            t.outcome("joined then banned" if joined.status_code == 200 else "banned then refused")
            t.rounds += 1
            t.overlapped += ban_sent < join_done
            t.could_post += await posts_room(api1, user, rid)
            t.could_read += await reads_room(sockets[user.id], api2, c.owner, rid, c.canaries[user.id]["id"])
            t.stale_redis += await in_redis_set(redis, rid, user.id)
        for ws in sockets.values():
            await ws.close()
    t.report("join/ban")
    assert t.rounds == ROUNDS
    assert t.overlapped >= ROUNDS // 10, "the ban rarely overlapped the join: the race was not exercised"
    assert t.outcomes.get("joined then banned", 0) > 0
    assert (t.could_post, t.could_read, t.stale_redis) == (0, 0, 0)


@pytest.mark.timeout(240)
async def test_join_leave_race_ends_with_access_exactly_as_postgresql_says(
        servers: tuple[ServerProc, ServerProc], redis: Redis) -> None:
    one, two = servers
    c = cast(one.base_url)
    t = Tally()
    wrong_access = 0  # member without access, or non-member with access
    async with httpx.AsyncClient(base_url=one.base_url, timeout=30) as api1, \
            httpx.AsyncClient(base_url=two.base_url, timeout=30) as api2:
        sockets = {u.id: await WS.open((one if i % 2 else two).ws_url, u.access_token)
                   for i, u in enumerate(c.users)}
        for user, room in pairs(c):
            rid = room["id"]
            (joined, join_done), (left, leave_sent) = await asyncio.gather(
                timed(api1.post(f"/rooms/{rid}/join", headers=user.headers)),
                later(random.uniform(0, MAX_DELAY_S), lambda: api2.post(f"/rooms/{rid}/leave", headers=user.headers)))
            # 404 not_member for the join: it committed, and the leave committed before it answered
            assert joined.status_code in (200, 404), joined.text
            assert left.status_code in (204, 404), left.text  # 404 not_member: the leave came before the join
            t.rounds += 1
            t.overlapped += leave_sent < join_done
            member = (await api1.get(f"/rooms/{rid}", headers=user.headers)).json()["my_role"] is not None
            t.outcome("member" if member else "not a member")
            posted = await posts_room(api2, user, rid)
            read = await reads_room(sockets[user.id], api1, c.owner, rid, c.canaries[user.id]["id"])
            in_set = await in_redis_set(redis, rid, user.id)
            if not member:
                t.could_post += posted
                t.could_read += read
                t.stale_redis += in_set
            wrong_access += (posted, read, in_set) != (member, member, member)
            if member:  # back out, so the next rounds start clean
                assert (await api1.post(f"/rooms/{rid}/leave", headers=user.headers)).status_code == 204
        for ws in sockets.values():
            await ws.close()
    t.report("join/leave")
    print(f"join/leave: rounds with access different from PostgreSQL's answer: {wrong_access}")
    assert t.rounds == ROUNDS
    assert t.overlapped >= ROUNDS // 10, "the leave rarely overlapped the join: the race was not exercised"
    assert (t.could_post, t.could_read, t.stale_redis, wrong_access) == (0, 0, 0, 0)


@pytest.mark.timeout(240)
async def test_handshake_kick_race_leaves_no_kicked_socket_reading(
        servers: tuple[ServerProc, ServerProc], redis: Redis) -> None:
    one, two = servers
    c = cast(one.base_url)
    t = Tally()
    async with httpx.AsyncClient(base_url=one.base_url, timeout=30) as api1, \
            httpx.AsyncClient(base_url=two.base_url, timeout=30) as api2:
        handshake_s, kick_s = 0.01, 0.01  # running estimates of how long each takes here
        for i, (user, room) in enumerate(pairs(c)):
            rid = room["id"]
            assert (await api1.post(f"/rooms/{rid}/join", headers=user.headers)).status_code == 200
            srv = one if i % 2 else two
            # Aim the kick's commit at the handshake's later part (registration, the rooms read
            # from PostgreSQL, the hello): the window where an attach could undo it.
            delay = max(0.0, random.uniform(0.3, 1.1) * handshake_s - 0.6 * kick_s)
            start = time.monotonic()
            (ws, hello_at), (kicked, kick_sent) = await asyncio.gather(
                timed(WS.open(srv.ws_url, user.access_token)),
                later(delay, lambda: api2.delete(f"/rooms/{rid}/members/{user.id}", headers=c.owner.headers)))
            kicked_at = time.monotonic()
            handshake_s = 0.8 * handshake_s + 0.2 * (hello_at - start)
            kick_s = 0.8 * kick_s + 0.2 * (kicked_at - kick_sent)
            assert kicked.status_code == 204, kicked.text
            t.rounds += 1
            t.overlapped += kick_sent < hello_at
            listed = rid in {r["room_id"] for r in ws.hello["rooms"]}
            t.outcome("hello listed the room" if listed else "hello without the room")
            t.could_post += await posts_room(api1, user, rid)
            t.could_read += await reads_room(ws, api2, c.owner, rid, c.canaries[user.id]["id"])
            t.stale_redis += await in_redis_set(redis, rid, user.id)
            await ws.close()
    t.report("handshake/kick")
    assert t.rounds == ROUNDS
    assert t.overlapped >= ROUNDS // 10, "the kick rarely overlapped the handshake: the race was not exercised"
    assert (t.could_post, t.could_read, t.stale_redis) == (0, 0, 0)


@pytest.mark.timeout(120)
async def test_the_worker_reconcile_repairs_a_set_that_went_stale(isolated: Any, redis: Redis, db: None) -> None:
    """The periodic actor, run by a real worker on its own Dramatiq namespace: a set that lost an
    add and missed a removal (a process died between commit and Redis) is repaired."""
    import uuid as _uuid

    from app.store import member_sets
    from app import rooms
    from app.jobs import enqueue
    from app.rooms import CreateRoom
    from models.user import User
    from tests.support import Proc, worker_argv

    async def new_user() -> str:
        name = f"rc{_uuid.uuid4().hex[:10]}"
        return str((await User.create(username=name, username_lower=name, display_name=name,
                                      password_hash="x")).id)

    keys = isolated.keys
    owner, member, intruder = await new_user(), await new_user(), await new_user()
    rid = (await rooms.create_room(redis=redis, keys=keys, owner_id=owner,
                                   data=CreateRoom(name="stale", member_ids=[member])))["id"]
    await redis.srem(keys.room_members(rid), member)
    await redis.sadd(keys.room_members(rid), intruder)
    worker = Proc(f"reconcile-worker-{unique('')}", worker_argv(processes=1, threads=2), isolated.env)
    try:
        deadline = time.monotonic() + 60
        while "worker resources open" not in worker.log_tail(200):
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail(60)
            await asyncio.sleep(0.2)
        await enqueue(isolated.settings, "reconcile_memberships")
        while not (await member_sets.is_member(redis, keys, rid, member)
                   and not await member_sets.is_member(redis, keys, rid, intruder)):
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail(60)
            await asyncio.sleep(0.2)
        report = [line for line in worker.log_tail(200).splitlines() if "membership reconcile:" in line]
        print("\n" + (report[-1] if report else "reconcile ran (no summary line)"))
        assert await member_sets.is_member(redis, keys, rid, owner) is True
    finally:
        worker.stop()
