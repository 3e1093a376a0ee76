"""On a real 3-master Redis Cluster: concurrent senders over two server processes, rooms on every
master, the operator's `flush` and `status` (issue 13, Tests).

The modules marked `redis_engines` run the real-time, worker and history tests on the cluster as
well; this one adds what only a cluster has: rooms whose keys live on different masters, each
with its own pending set (one per slot), all fanned out through one subscription per process.
Everything runs under a prefix of its own, so `flush` and `status` see only this module's rooms.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from typing import Any

import httpx
import pytest
import redis as redis_sync

from tests.env import Engine, Isolated
from tests.factories import TestUser, make_room, make_user
from tests.support import OwnServers, Proc, ServerProc
from tests.wsclient import WS

pytestmark = pytest.mark.redis_engines("cluster")


@pytest.fixture(scope="module")
def iso(redis_engine: Engine) -> Isolated:
    return redis_engine.isolated("cl")


@pytest.fixture(scope="module")
def pair(own_server: OwnServers, iso: Isolated) -> tuple[ServerProc, ServerProc]:
    """Two server processes on the cluster, sharing the database and the module's prefix."""
    return own_server(iso.env, name="cluster-a"), own_server(iso.env, name="cluster-b")


@pytest.fixture(scope="module")
def cluster_client(iso: Isolated) -> Any:
    client = redis_sync.RedisCluster.from_url(iso.settings.redis_url, decode_responses=True)
    yield client
    client.close()


def master_of(client: Any, key: str) -> int:
    """The port of the master serving `key`'s slot."""
    return client.get_node_from_key(key).port


def rooms_on_every_master(api: httpx.Client, client: Any, iso: Isolated, owner: TestUser,
                          members: list[TestUser], per_master: int = 1) -> list[str]:
    """Rooms (ids) created until `per_master` of them live on each master (slots are random uuids)."""
    masters = {node.port for node in client.get_primaries()}
    by_master: dict[int, list[str]] = {m: [] for m in masters}
    for _ in range(40 * per_master):
        if all(len(v) >= per_master for v in by_master.values()):
            break
        rid = make_room(api, owner, member_ids=[u.id for u in members])["id"]
        port = master_of(client, iso.keys.room_seq(rid))
        if len(by_master[port]) < per_master:
            by_master[port].append(rid)
    rooms = [rid for v in by_master.values() for rid in v]
    # The point of the module: rooms on more than one master (so scripts and pending sets too).
    assert len({master_of(client, iso.keys.room_seq(r)) for r in rooms}) >= 2, by_master
    return rooms


def cli(iso: Isolated, command: str, timeout: float = 90.0) -> str:
    """`python -m app.ops.cli <command>` on the module's cluster env; its output (exit code 0)."""
    proc = Proc(f"cli-{command}-{uuid.uuid4().hex[:6]}", [sys.executable, "-m", "app.ops.cli", command], iso.env)
    try:
        code = proc.wait_exit(timeout)  # not reaped yet: stop() may still signal its group safely
    finally:
        proc.stop()
    out = proc.output()
    assert code == 0, f"cli {command} exited {code}:\n{out}"
    return out


async def test_50_senders_on_two_processes_in_rooms_on_every_master_get_gap_free_ordered_delivery(
        pair: tuple[ServerProc, ServerProc], iso: Isolated, cluster_client: Any) -> None:
    """Every connection gets every message of every room exactly once, in seq order per room."""
    a_srv, b_srv = pair
    with httpx.Client(base_url=a_srv.base_url, timeout=10) as api:
        users = [make_user(api) for _ in range(10)]
        rooms = rooms_on_every_master(api, cluster_client, iso, users[0], users[1:])
    senders, per_sender = 50, 6
    plan = [[rooms[(i + k) % len(rooms)] for k in range(per_sender)] for i in range(senders)]
    want = {r: sum(row.count(r) for row in plan) for r in rooms}
    total = sum(want.values())
    conns = [await WS.open((a_srv if i % 2 else b_srv).ws_url, users[i % len(users)].access_token)
             for i in range(senders)]
    received: list[dict[str, list[int]]] = [{r: [] for r in rooms} for _ in conns]

    async def run(i: int) -> None:
        ws, got = conns[i], received[i]

        async def reader() -> None:
            n = 0
            while n < total:
                frame = await ws.recv(30)
                if frame["type"] in ("message", "ack") and frame["message"]["room_id"] in got:
                    got[frame["message"]["room_id"]].append(frame["message"]["seq"])
                    n += 1

        task = asyncio.create_task(reader())
        for k, room in enumerate(plan[i]):
            await ws.send({"type": "send", "room_id": room, "body": f"{i}:{k}", "client_id": f"{i}-{k}"})
            await asyncio.sleep(random.random() * 0.005)
        await task

    try:
        await asyncio.gather(*(run(i) for i in range(senders)))
    finally:
        for ws in conns:
            await ws.close()
    for got in received:
        for room in rooms:
            assert got[room] == list(range(1, want[room] + 1)), (room, got[room][:20])
    with httpx.Client(base_url=b_srv.base_url, timeout=10) as api:
        for room in rooms:
            page = api.get(f"/rooms/{room}/messages", params={"limit": 200}, headers=users[0].headers).json()
            assert [m["seq"] for m in page["items"]] == list(range(1, want[room] + 1))


async def test_flush_and_status_on_the_cluster_move_every_message_to_postgresql_once(
        pair: tuple[ServerProc, ServerProc], iso: Isolated, cluster_client: Any, pool: Any) -> None:
    a_srv, b_srv = pair
    with httpx.Client(base_url=a_srv.base_url, timeout=10) as api:
        owner = make_user(api)
        rooms = rooms_on_every_master(api, cluster_client, iso, owner, [], per_master=2)
    per_room = 60
    sent: dict[str, dict[int, str]] = {r: {} for r in rooms}
    async with httpx.AsyncClient(base_url=a_srv.base_url, timeout=20) as ca, \
            httpx.AsyncClient(base_url=b_srv.base_url, timeout=20) as cb:
        async def send(room: str, n: int) -> None:
            resp = await (ca if n % 2 else cb).post(f"/rooms/{room}/messages", json={"body": f"f{n}"},
                                                     headers=owner.headers)
            assert resp.status_code == 201, resp.text
            sent[room][resp.json()["seq"]] = resp.json()["id"]

        await asyncio.gather(*(send(r, n) for r in rooms for n in range(per_room)))
    for room in rooms:
        assert sorted(sent[room]) == list(range(1, per_room + 1))
        # the room's pending flag sits in its own slot's set, on the room's master
        assert cluster_client.sismember(iso.keys.pending_set(room), room)
        assert master_of(cluster_client, iso.keys.pending_set(room)) == master_of(cluster_client,
                                                                                   iso.keys.room_seq(room))

    before = cli(iso, "status")
    for room in rooms:  # "backlog seq flushed cached room", one line per pending room
        assert any(line.split() == [str(per_room), str(per_room), "0", str(per_room), room]
                   for line in before.splitlines()), before

    out = cli(iso, "flush")
    assert "not finished" not in out, out
    for room in rooms:
        rows = await pool.fetch("SELECT seq, id FROM messages WHERE room_id = $1 ORDER BY seq", uuid.UUID(room))
        assert [(r["seq"], str(r["id"])) for r in rows] == sorted(sent[room].items()), room  # each once
        assert int(cluster_client.get(iso.keys.room_flushed(room))) == per_room
        assert not cluster_client.sismember(iso.keys.pending_set(room), room)

    after = cli(iso, "status")
    assert "pending rooms: 0, unflushed messages: 0" in after, after
    again = cli(iso, "flush")  # nothing left to move: a second flush writes no row twice
    assert "0 messages flushed" in again, again
    for room in rooms:
        assert await pool.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", uuid.UUID(room)) == per_room
