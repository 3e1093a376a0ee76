"""History over HTTP against real servers: the contract, exactness while rows move, counter loss, direct mode."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.flush import flush_room
from app.store.keys import Keys
from app.settings import Settings
from tests.env import TEST_ENV
from tests.factories import TestUser, make_room, make_user
from tests.fill import FlushGate, flush_upto
from tests.support import OwnServers, ServerProc
from tests.wsclient import WS

pytestmark = pytest.mark.redis_engines  # single-node Redis and a Redis Cluster (tests/conftest.py)


def post(api: httpx.Client, user: TestUser, room_id: str, body: str, **extra: Any) -> httpx.Response:
    return api.post(f"/rooms/{room_id}/messages", json={"body": body, **extra}, headers=user.headers)


def seqs(api: httpx.Client, user: TestUser, room_id: str, **params: Any) -> tuple[list[int], bool]:
    resp = api.get(f"/rooms/{room_id}/messages", params=params, headers=user.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return [m["seq"] for m in body["items"]], body["has_more"]


def test_http_send_and_read_back(api: httpx.Client) -> None:
    alice, bob = make_user(api), make_user(api)
    room = make_room(api, alice)
    resp = post(api, alice, room["id"], "hello", client_id="h1")
    assert resp.status_code == 201
    msg = resp.json()
    assert msg["seq"] == 1 and msg["sender_id"] == alice.id and msg["client_id"] == "h1" and msg["file"] is None
    retry = post(api, alice, room["id"], "hello again", client_id="h1")
    assert retry.status_code == 200 and retry.json() == msg
    assert api.get(f"/rooms/{room['id']}/messages/1", headers=alice.headers).json() == msg
    missing = api.get(f"/rooms/{room['id']}/messages/2", headers=alice.headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "message_not_found"
    for bad in ("abc", "0", "-1"):
        assert api.get(f"/rooms/{room['id']}/messages/{bad}", headers=alice.headers).status_code == 404
    # a member who joins later sees the whole history
    assert api.post(f"/rooms/{room['id']}/join", headers=bob.headers).status_code == 200
    assert seqs(api, bob, room["id"]) == ([1], False)


@pytest.mark.redis_engines("single")  # request validation: no Redis in it
@pytest.mark.parametrize("payload,status,code", [
    ({"body": ""}, 422, "validation_failed"),
    ({"body": "x" * 4001}, 422, "validation_failed"),
    ({}, 422, "validation_failed"),
    ({"body": 5}, 422, "validation_failed"),
    ({"body": "ok", "client_id": "c" * 65}, 422, "validation_failed"),
    ("not json", 400, "malformed_json"),
])
def test_http_send_validation(api: httpx.Client, payload: Any, status: int, code: str) -> None:
    alice = make_user(api)
    room = make_room(api, alice)
    if isinstance(payload, str):
        resp = api.post(f"/rooms/{room['id']}/messages", content=payload, headers=alice.headers)
    else:
        resp = api.post(f"/rooms/{room['id']}/messages", json=payload, headers=alice.headers)
    assert resp.status_code == status and resp.json()["error"]["code"] == code
    assert post(api, alice, room["id"], "fine").json()["seq"] == 1


def test_access_rules(api: httpx.Client) -> None:
    owner, outsider = make_user(api), make_user(api)
    public = make_room(api, owner)
    private = make_room(api, owner, is_private=True)
    for room, status, code in ((public, 403, "not_member"), (private, 404, "room_not_found")):
        for resp in (post(api, outsider, room["id"], "hi"),
                     api.get(f"/rooms/{room['id']}/messages", headers=outsider.headers),
                     api.get(f"/rooms/{room['id']}/messages/1", headers=outsider.headers)):
            assert resp.status_code == status and resp.json()["error"]["code"] == code
    for rid in ("nope", "00000000-0000-0000-0000-000000000000"):
        assert post(api, owner, rid, "x").status_code == 404
        assert api.get(f"/rooms/{rid}/messages", headers=owner.headers).status_code == 404
    assert api.get(f"/rooms/{public['id']}/messages").status_code == 401
    assert api.post(f"/rooms/{public['id']}/messages", json={"body": "x"}).status_code == 401


def test_history_paging_and_bad_arguments(api: httpx.Client) -> None:
    alice = make_user(api)
    room = make_room(api, alice)
    for i in range(12):
        post(api, alice, room["id"], f"m{i}")
    rid = room["id"]
    assert seqs(api, alice, rid, limit=5) == ([8, 9, 10, 11, 12], True)
    assert seqs(api, alice, rid, limit=5, before=8) == ([3, 4, 5, 6, 7], True)
    assert seqs(api, alice, rid, after=10) == ([11, 12], False)
    assert seqs(api, alice, rid, after=2, before=6) == ([3, 4, 5], False)
    assert seqs(api, alice, rid, limit=1000)[0] == list(range(1, 13))  # clamped, not refused
    for params in ({"limit": 0}, {"limit": "x"}, {"before": "x"}, {"before": 0}, {"after": -1}, {"after": "1.5"}):
        resp = api.get(f"/rooms/{rid}/messages", params=params, headers=alice.headers)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_failed", params
        assert resp.json()["error"]["details"]["fields"]


async def test_history_stays_exact_while_rows_move_under_concurrent_sends(
        server: ServerProc, api: httpx.Client, redis: Redis, keys: Keys, settings: Settings, pool: Any) -> None:
    """Sends, the real flush and reads at once; some reads provably run while a flushed batch
    is committed in PostgreSQL and not yet trimmed from Redis (the flush is held there)."""
    users = [make_user(api) for _ in range(4)]
    room = make_room(api, users[0], member_ids=[u.id for u in users[1:]])
    rid, total = room["id"], 600
    # Small batches and a tiny tail, so rows really leave the cache while the reads run.
    flush_settings = settings.replace(flush_batch_size=40, cache_tail=5)
    gate = FlushGate(pool)
    conns = [await WS.open(server.ws_url, u.access_token) for u in users]
    done = asyncio.Event()
    client = httpx.AsyncClient(base_url=server.base_url, headers=users[0].headers, timeout=10)

    async def sender(ws: WS, n: int) -> None:
        for k in range(n):
            await ws.request({"type": "send", "room_id": rid, "body": f"b{k}"}, "ack")

    async def senders() -> None:
        await asyncio.gather(*(sender(ws, total // len(conns)) for ws in conns))
        done.set()

    async def read_once() -> None:
        """The newest page and a page across the flushed/cached boundary: no gap, no duplicate."""
        resp = await client.get(f"/rooms/{rid}/messages", params={"limit": 200})
        assert resp.status_code == 200, resp.text
        got = [m["seq"] for m in resp.json()["items"]]
        if not got:
            return
        assert got == list(range(got[0], got[-1] + 1)), got
        assert got[0] == 1 or len(got) == 200, got
        after = max(0, got[-1] - 120)
        page = (await client.get(f"/rooms/{rid}/messages", params={"after": after, "limit": 100})).json()
        assert [m["seq"] for m in page["items"]] == list(range(after + 1, after + 1 + len(page["items"])))

    windows = 0  # reads done while a committed batch was still untrimmed in Redis

    async def mover() -> None:
        nonlocal windows
        while not done.is_set():
            top = int(await redis.get(keys.room_seq(rid)) or 0)
            flushed = int(await redis.get(keys.room_flushed(rid)) or 0)
            if top - flushed < 10:
                await asyncio.sleep(0.01)
                continue
            flush = asyncio.create_task(flush_room(rid, redis=redis, keys=keys, settings=flush_settings,
                                                   pool=gate, max_run_s=5))
            while await gate.wait_paused(flush):
                # Held between the PostgreSQL commit and the Redis step: prove it, then read.
                mark = int(await redis.get(keys.room_flushed(rid)) or 0)
                in_pg = await pool.fetchval("SELECT max(seq) FROM messages WHERE room_id = $1", uuid.UUID(rid))
                first = await redis.xrange(keys.room_log(rid), count=1)
                assert in_pg > mark and first and int(first[0][0].split("-")[0]) <= mark + 1, (in_pg, mark, first)
                await read_once()
                windows += 1
                gate.resume()
            await flush

    async def reader() -> int:
        pages = 0
        while not done.is_set():
            await read_once()
            pages += 1
        return pages

    try:
        _, _, pages = await asyncio.gather(senders(), mover(), reader())
    finally:
        await client.aclose()
    assert windows >= 3 and pages > 0, (windows, pages)
    everything: list[int] = []
    after = 0
    while True:
        got, more = seqs(api, users[0], rid, after=after, limit=200)
        everything += got
        if not more:
            break
        after = got[-1]
    assert everything == list(range(1, total + 1))
    assert await redis.xlen(keys.room_log(rid)) < total // 2  # rows really left the cache
    for ws in conns:
        await ws.close()


async def test_counter_loss_continues_after_postgres_max(api: httpx.Client, redis: Redis, keys: Keys,
                                                         settings: Settings, pool: Any) -> None:
    alice = make_user(api)
    room = make_room(api, alice)
    rid = room["id"]
    for i in range(6):
        post(api, alice, rid, f"m{i}")
    await flush_upto(redis, keys, settings, pool, rid, 6)  # the real flush: all 6 in PostgreSQL
    await redis.delete(keys.room_seq(rid), keys.room_log(rid), keys.room_flushed(rid))  # Redis lost the room
    assert post(api, alice, rid, "after loss").json()["seq"] == 7
    await redis.delete(keys.room_seq(rid))  # only the counter, while the stream still holds 7
    assert post(api, alice, rid, "again").json()["seq"] == 8
    assert seqs(api, alice, rid) == (list(range(1, 9)), False)


# -- direct mode --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def direct_server(own_server: OwnServers) -> ServerProc:
    return own_server(name="direct", CHAT_WRITE_MODE="direct")


async def test_direct_mode_accepts_orders_and_serves_history(direct_server: ServerProc, redis: Redis,
                                                             keys: Keys) -> None:
    with httpx.Client(base_url=direct_server.base_url, timeout=10) as api:
        alice, bob = make_user(api), make_user(api)
        room = make_room(api, alice, member_ids=[bob.id])
        rid = room["id"]
        a = await WS.open(direct_server.ws_url, alice.access_token)
        b = await WS.open(direct_server.ws_url, bob.access_token)
        await asyncio.gather(*(a.send({"type": "send", "room_id": rid, "body": f"d{i}", "client_id": f"d{i}"})
                               for i in range(20)))
        acks = [await a.recv_until(lambda f: f["type"] == "ack") for _ in range(20)]
        assert sorted(x["message"]["seq"] for x in acks) == list(range(1, 21))
        got = [(await b.recv_until(lambda f: f["type"] == "message"))["message"]["seq"] for _ in range(20)]
        assert got == list(range(1, 21))
        retry = post(api, alice, rid, "again", client_id="d3")
        assert retry.status_code == 200 and retry.json()["client_id"] == "d3"
        assert seqs(api, alice, rid, limit=5) == ([16, 17, 18, 19, 20], True)
        assert api.get(f"/rooms/{rid}/messages/20", headers=bob.headers).json()["seq"] == 20
        assert not await redis.exists(keys.room_log(rid))  # the cache was never used
        b2 = await WS.open(direct_server.ws_url, bob.access_token)
        assert {r["room_id"]: r["last_seq"] for r in b2.hello["rooms"]}[rid] == 20
        for ws in (a, b, b2):
            await ws.close()
