"""Message lifecycle end to end (issue 12): edits, deletes, reactions, replies, read markers,
unread/mention counts and search against a real server AND a real Dramatiq worker.

One server and one worker for the module, on a Redis prefix (hence Dramatiq namespace) and a
MEDIA_ROOT of their own. The worker keeps nothing in Redis once flushed (CACHE_TAIL=0), so a
flushed message is read from PostgreSQL only; flushes happen when a test asks for one (the
backlog trigger is out of reach and no scheduler runs): `drain` enqueues the real
`flush_room` job and waits until the room is drained in the spec's sense (messages flushed,
no unflushed change, no dirty read marker, out of the pending set).
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from app.jobs import enqueue_flush_room
from app.settings import Settings
from app.store.keys import Keys
from tests import samples
from tests.env import RUN_ID, TEST_DB_URL, isolated_env
from tests.factories import TestUser, make_room, make_user
from tests.fill import push
from tests.support import Proc, ServerProc, worker_argv
from tests.wsclient import WS

pytestmark = pytest.mark.timeout(180)

FLUSH_BATCH = 100  # the worker's batch: a backlog of thousands takes many batches (a flush "in progress")


@dataclass
class Stack:
    server: ServerProc
    worker: Proc
    settings: Settings
    keys: Keys
    media_root: Path
    api: httpx.Client  # setup only (users, rooms, uploads); tests use `client()` for async calls

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.server.base_url, timeout=30.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    iso = isolated_env("life")
    media = tmp_path_factory.mktemp("lifecycle-media")
    env = {**iso.env, "MEDIA_ROOT": str(media), "CACHE_TAIL": "0", "FLUSH_BATCH_SIZE": str(FLUSH_BATCH),
           "FLUSH_BACKLOG_THRESHOLD": str(10**9), "FLUSH_LEASE_S": "2", "BROKER_HEARTBEAT_TIMEOUT_S": "4",
           # Thousands of changes per test: the per-user change limit is relaxed like the others in TEST_ENV.
           "RATE_CHANGES": "1000000"}
    settings = Settings.load(env=env, env_file=None)
    server = ServerProc(env, name=f"lifecycle-server-{RUN_ID}")
    worker = Proc(f"lifecycle-worker-{RUN_ID}", worker_argv(processes=1, threads=4), env)
    try:
        server.wait_ready()
        deadline = time.monotonic() + 40
        while "worker resources open" not in worker.log_tail(200):
            assert worker.alive(), f"worker exited:\n{worker.log_tail(60)}"
            assert time.monotonic() < deadline, f"worker did not boot:\n{worker.log_tail(60)}"
            time.sleep(0.1)
        with httpx.Client(base_url=server.base_url, timeout=30.0) as api:
            yield Stack(server, worker, settings, Keys(settings.redis_prefix), media, api)
    finally:
        worker.stop()
        server.stop()


# -- helpers ---------------------------------------------------------------------------------------

async def room_state(redis: Redis, keys: Keys, rid: str) -> dict[str, Any]:
    return {"seq": int(await redis.get(keys.room_seq(rid)) or 0),
            "flushed": int(await redis.get(keys.room_flushed(rid)) or 0),
            "changed": await redis.zcard(keys.room_changed(rid)),
            "rdirty": await redis.scard(keys.room_reads_dirty(rid)),
            "pending": bool(await redis.sismember(keys.pending_rooms(), rid))}


async def drain(stack: Stack, redis: Redis, rid: str, timeout: float = 30.0) -> None:
    """The worker's real flush of the room, until it is drained (re-asked every few seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    asked = -100.0
    while True:
        st = await room_state(redis, stack.keys, rid)
        if st["flushed"] >= st["seq"] and not st["changed"] and not st["rdirty"] and not st["pending"]:
            return
        if loop.time() - asked > 3:
            await enqueue_flush_room(stack.settings, rid)
            asked = loop.time()
        if loop.time() > deadline:
            raise AssertionError(f"room {rid} not drained after {timeout}s: {st}\n--- worker log ---\n"
                                 f"{stack.worker.log_tail(60)}")
        await asyncio.sleep(0.05)


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    return resp.json()


def err(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    assert resp.json()["error"]["code"] == code, resp.text


def emoji_path(rid: str, seq: int, emoji: str) -> str:
    return f"/rooms/{rid}/messages/{seq}/reactions/{quote(emoji, safe='')}"


async def send(c: httpx.AsyncClient, user: TestUser, rid: str, body: str, **extra: Any) -> dict[str, Any]:
    return ok(await c.post(f"/rooms/{rid}/messages", json={"body": body, **extra}, headers=user.headers), 201)


async def edit(c: httpx.AsyncClient, user: TestUser, rid: str, seq: int, body: str) -> httpx.Response:
    return await c.patch(f"/rooms/{rid}/messages/{seq}", json={"body": body}, headers=user.headers)


async def delete(c: httpx.AsyncClient, user: TestUser, rid: str, seq: int) -> httpx.Response:
    return await c.delete(f"/rooms/{rid}/messages/{seq}", headers=user.headers)


async def react(c: httpx.AsyncClient, user: TestUser, rid: str, seq: int, emoji: str, add: bool = True) -> httpx.Response:
    path = emoji_path(rid, seq, emoji)
    return await (c.put(path, headers=user.headers) if add else c.delete(path, headers=user.headers))


async def history(c: httpx.AsyncClient, user: TestUser, rid: str) -> list[dict[str, Any]]:
    """The room's whole history, oldest first, paged by `after`."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        body = ok(await c.get(f"/rooms/{rid}/messages", params={"after": after, "limit": 200},
                              headers=user.headers))
        out += body["items"]
        if not body["has_more"] or not body["items"]:
            break
        after = body["items"][-1]["seq"]
    assert [m["seq"] for m in out] == list(range(1, len(out) + 1)), "history is not gap-free"
    return out


def strip_me(msg: dict[str, Any]) -> dict[str, Any]:
    """The message without the per-viewer `me` flags (what two viewers must agree on)."""
    m = copy.deepcopy(msg)
    for r in m.get("reactions") or []:
        r.pop("me", None)
    return m


def reaction_view(msg: dict[str, Any]) -> list[tuple[str, int, frozenset[str]]]:
    return [(r["emoji"], r["count"], frozenset(r["user_ids"])) for r in msg.get("reactions") or []]


def assert_me(msg: dict[str, Any], viewer: TestUser) -> None:
    for r in msg.get("reactions") or []:
        assert r["me"] == (viewer.id in r["user_ids"]), (viewer.id, msg)


class Model:
    """What a user expects of each message after the changes the test made (checked field by field)."""

    def __init__(self) -> None:
        self.body: dict[int, str] = {}
        self.edited: set[int] = set()
        self.deleted: set[int] = set()
        self.reactions: dict[int, dict[str, list[str]]] = {}
        self.changes = 0  # effective changes: each took one version
        self.changed: set[int] = set()  # messages with at least one effective change (version > 0)

    def sent(self, seq: int, body: str) -> None:
        self.body[seq] = body

    def edit(self, seq: int, body: str) -> None:
        self.body[seq] = body
        self.edited.add(seq)
        self.changed.add(seq)
        self.changes += 1

    def delete(self, seq: int) -> None:
        self.deleted.add(seq)
        self.reactions.pop(seq, None)
        self.changed.add(seq)
        self.changes += 1

    def react(self, seq: int, user_id: str, emoji: str, add: bool) -> bool:
        """Applies the reaction; False when it is a no-op (no version, no event)."""
        users = self.reactions.get(seq, {}).get(emoji, [])
        if add == (user_id in users):
            return False
        per = self.reactions.setdefault(seq, {})
        if add:
            per[emoji] = users + [user_id]
        else:
            users.remove(user_id)
            if not users:
                del per[emoji]
        self.changed.add(seq)
        self.changes += 1
        return True

    def check(self, msg: dict[str, Any]) -> None:
        seq = msg["seq"]
        if seq in self.deleted:
            assert msg["deleted"] is True and msg["body"] == "" and msg["file"] is None, msg
            assert msg["reply_to"] is None and not msg.get("reactions") and not msg.get("mentions"), msg
        else:
            assert msg["deleted"] is False and msg["body"] == self.body[seq], (self.body[seq], msg)
            want = [(e, len(u), frozenset(u)) for e, u in self.reactions.get(seq, {}).items()]
            assert reaction_view(msg) == want, (want, msg)
        assert (msg["edited_at"] is not None) == (seq in self.edited), msg
        assert (msg["version"] > 0) == (seq in self.changed), msg


def apply_event(state: dict[int, dict[str, Any]], frame: dict[str, Any], rid: str) -> None:
    """A client's view: new messages added, updates kept when they carry a higher version."""
    if frame.get("room_id", (frame.get("message") or {}).get("room_id")) != rid:
        return
    if frame["type"] == "message":
        state.setdefault(frame["message"]["seq"], frame["message"])
    elif frame["type"] == "message_updated":
        msg = frame["message"]
        old = state.get(msg["seq"])
        if old is None or msg["version"] > old.get("version", 0):
            state[msg["seq"]] = msg


async def pg_rows(rid: str) -> dict[int, asyncpg.Record]:
    conn = await asyncpg.connect(TEST_DB_URL)
    try:
        rows = await conn.fetch("SELECT seq, body, deleted, version, file_id, edited_at, reactions "
                                "FROM messages WHERE room_id = $1", uuid.UUID(rid))
    finally:
        await conn.close()
    return {r["seq"]: r for r in rows}


async def ws_sync(ws: WS, rid: str, after_seq: int, after_version: int | None, limit: int = 200) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "sync", "room_id": rid, "after_seq": after_seq, "limit": limit}
    if after_version is not None:
        frame["after_version"] = after_version
    got = await ws.request(frame, "sync")
    assert got["type"] == "sync", got
    return got


def hello_room(ws: WS, rid: str) -> dict[str, Any]:
    return {r["room_id"]: r for r in ws.hello["rooms"]}[rid]


# -- edit / delete / react: cached, flushed, and across the flush --------------------------------------

async def test_changes_on_cached_and_flushed_messages_history_exact_across_the_flush(
        stack: Stack, redis: Redis) -> None:
    alice, bob = make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, member_ids=[bob.id])["id"]
    model = Model()
    async with stack.client() as c:
        for i in range(1, 7):
            who = bob if i == 4 else alice
            model.sent((await send(c, who, rid, f"m{i}"))["seq"], f"m{i}")
        await drain(stack, redis, rid)
        assert await redis.xlen(stack.keys.room_log(rid)) == 0  # 1-6 only in PostgreSQL now
        for i in range(7, 11):
            model.sent((await send(c, alice, rid, f"m{i}"))["seq"], f"m{i}")
        assert await redis.get(stack.keys.room_flushed(rid)) in (b"6", "6")

        # edits: flushed 2, cached 8 (twice)
        for seq, body in ((2, "m2 edited"), (8, "m8 edited"), (8, "m8 edited again")):
            got = ok(await edit(c, alice, rid, seq, body))
            model.edit(seq, body)
            model.check(got)
        # reactions on flushed 2 and cached 8, 10; idempotent repeats change nothing
        for user, seq, emoji, add in ((bob, 2, "👍", True), (alice, 2, "👍", True), (alice, 2, "🎉", True),
                                      (bob, 8, "👍", True), (alice, 8, "🎉", True), (alice, 8, "🎉", False),
                                      (bob, 10, "🔥", True)):
            got = ok(await react(c, user, rid, seq, emoji, add))
            assert model.react(seq, user.id, emoji, add)
            model.check(got)
            assert_me(got, user)
        before_noop = ok(await c.get(f"/rooms/{rid}/messages/2", headers=bob.headers))
        again = ok(await react(c, bob, rid, 2, "👍"))
        assert again["version"] == before_noop["version"] and reaction_view(again) == reaction_view(before_noop)
        gone = ok(await react(c, bob, rid, 8, "🎉", add=False))  # never reacted with it: a no-op too
        model.check(gone)
        # deletes: flushed 3 (own), cached 9 (own), flushed 4 (bob's, by the owner)
        for seq in (3, 9, 4):
            got = ok(await delete(c, alice, rid, seq))
            model.delete(seq)
            model.check(got)
        tomb = ok(await delete(c, alice, rid, 3))  # deleting again: the same tombstone, no new version
        model.check(tomb)
        # refusals
        err(await edit(c, bob, rid, 2, "not mine"), 403, "forbidden")
        err(await delete(c, bob, rid, 5), 403, "forbidden")
        err(await edit(c, alice, rid, 3, "resurrect"), 409, "message_deleted")
        err(await react(c, bob, rid, 9, "👍"), 409, "message_deleted")
        err(await edit(c, alice, rid, 99, "nope"), 404, "message_not_found")
        err(await react(c, bob, rid, 99, "👍"), 404, "message_not_found")
        err(await react(c, bob, rid, 5, "a b"), 422, "validation_failed")
        err(await edit(c, alice, rid, 5, ""), 422, "validation_failed")

        before = await history(c, bob, rid)
        assert len(before) == 10
        for msg in before:
            model.check(msg)
            assert_me(msg, bob)
            one = ok(await c.get(f"/rooms/{rid}/messages/{msg['seq']}", headers=bob.headers))
            assert one == msg
        # The room's change counter is gap-free: one version per effective change, no-ops none.
        assert max(m["version"] for m in before) == model.changes
        ws = await WS.open(stack.server.ws_url, bob.access_token)
        try:
            assert hello_room(ws, rid)["last_version"] == model.changes
            s1 = await ws_sync(ws, rid, 10, 0)
            assert s1["messages"] == [] and s1["last_version"] == model.changes
            changed = sorted((m for m in before if m["version"] > 0), key=lambda m: m["version"])
            assert s1["changes"] == changed and s1["changes_has_more"] is False

            await drain(stack, redis, rid)
            after = await history(c, bob, rid)
            assert after == before
            assert not await redis.exists(stack.keys.room_state(rid)) or \
                await redis.hlen(stack.keys.room_state(rid)) == 0  # every overlay entry written and dropped
            s2 = await ws_sync(ws, rid, 10, 0)  # now answered from PostgreSQL's messages.version
            assert s2["changes"] == changed and s2["last_version"] == model.changes
            assert (await ws_sync(ws, rid, 10, model.changes))["changes"] == []
            rows = await pg_rows(rid)
            for msg in after:
                row = rows[msg["seq"]]
                assert row["version"] == msg["version"] and row["deleted"] == msg["deleted"], (row, msg)
                assert row["body"] == msg["body"], (row, msg)  # a tombstone's body is gone from PostgreSQL too
                assert (row["edited_at"] is not None) == (msg["edited_at"] is not None)

            # A message whose change is already in PostgreSQL changes again (its base comes from PG).
            got = ok(await edit(c, alice, rid, 2, "m2 third"))
            model.edit(2, "m2 third")
            model.check(got)
            got = ok(await react(c, bob, rid, 2, "👍", add=False))
            assert model.react(2, bob.id, "👍", False)
            model.check(got)
            assert got["version"] == model.changes
            mid = await history(c, bob, rid)
            await drain(stack, redis, rid)
            assert await history(c, bob, rid) == mid
            for msg in mid:
                model.check(msg)
        finally:
            await ws.close()


async def test_changes_while_a_large_backlog_is_being_flushed(stack: Stack, redis: Redis, db: None) -> None:
    """5000 cached messages flush in 50 batches while edits, deletes and reactions hit them,
    many right at the flush front; afterwards every message is exactly what the changes made it."""
    alice, bob = make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, member_ids=[bob.id])["id"]
    total = 5000
    sent = await push(redis, stack.keys, rid, alice.id, total, settings=stack.settings)
    model = Model()
    for m in sent:
        model.sent(m["seq"], m["body"])
    assert [m["seq"] for m in sent] == list(range(1, total + 1))
    tasks_n = 8
    overlapped = 0
    done = asyncio.Event()
    emojis = ["👍", "🎉", "❤️"]

    async def changer(c: httpx.AsyncClient, k: int) -> None:
        """Changes the seqs s with s % tasks_n == k (so no two tasks race on one message)."""
        nonlocal overlapped
        rnd = random.Random(k)
        while not done.is_set():
            flushed = int(await redis.get(stack.keys.room_flushed(rid)) or 0)
            if rnd.random() < 0.6:  # at the flush front: in the batch being written, or the next
                s = flushed + rnd.randint(-FLUSH_BATCH // 2, 2 * FLUSH_BATCH)
            else:
                s = rnd.randint(1, total)
            s = s - (s % tasks_n) + k  # into this task's residue class
            if not 1 <= s <= total:
                continue
            op = rnd.random()
            if s in model.deleted:
                err(await edit(c, alice, rid, s, "x"), 409, "message_deleted")
            elif op < 0.4:
                body = f"edit {s} {rnd.randint(0, 10**6)}"
                got = ok(await edit(c, alice, rid, s, body))
                model.edit(s, body)
                model.check(got)
            elif op < 0.9:
                emoji, add = rnd.choice(emojis), rnd.random() < 0.7
                got = ok(await react(c, bob, rid, s, emoji, add))
                model.react(s, bob.id, emoji, add)
                model.check(got)
            else:
                got = ok(await delete(c, alice, rid, s))
                model.delete(s)
                model.check(got)
            if 0 < flushed < total:
                overlapped += 1

    async def flusher() -> None:
        await enqueue_flush_room(stack.settings, rid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while int(await redis.get(stack.keys.room_flushed(rid)) or 0) < total:
            assert loop.time() < deadline, f"flush stuck:\n{stack.worker.log_tail(40)}"
            await asyncio.sleep(0.02)
        done.set()

    async with stack.client() as c:
        await asyncio.gather(flusher(), *(changer(c, k) for k in range(tasks_n)))
        assert overlapped >= 20, f"only {overlapped} changes ran while the flush was moving the room"
        before = await history(c, bob, rid)
        for msg in before:
            model.check(msg)
        await drain(stack, redis, rid)
        assert await redis.xlen(stack.keys.room_log(rid)) == 0
        after = await history(c, bob, rid)
        assert after == before
        rows = await pg_rows(rid)
        assert len(rows) == total
        for msg in after:
            row = rows[msg["seq"]]
            assert (row["version"], row["deleted"], row["body"]) == (msg["version"], msg["deleted"], msg["body"]), \
                (dict(row), msg)
        assert max(m["version"] for m in after) == model.changes



# -- catch-up after being offline -----------------------------------------------------------------------

def canon(msg: dict[str, Any]) -> dict[str, Any]:
    """The API message with the optional stored-form arrays filled and `me` dropped: two viewers'
    (or a live event's and a sync's) copies of one message state compare equal."""
    m = strip_me(msg)
    m.setdefault("reactions", [])
    m.setdefault("mentions", [])
    m["reactions"] = m["reactions"] or []
    m["mentions"] = m["mentions"] or []
    return m


class Follower:
    """An always-online client: applies every message / message_updated event to its rooms' state."""

    def __init__(self, ws: WS, states: dict[str, dict[int, dict[str, Any]]]) -> None:
        self.ws, self.states = ws, states
        self.frames: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            frame = await self.ws.recv(timeout=3600)
            self.frames.append(frame)
            for rid, state in self.states.items():
                apply_event(state, frame, rid)

    async def wait(self, rid: str, last_seq: int, last_version: int, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            st = self.states[rid]
            top = max(st) if st else 0
            ver = max((m.get("version", 0) for m in st.values()), default=0)
            if top >= last_seq and ver >= last_version:
                return
            assert not self.task.done(), self.task.exception()
            assert loop.time() < deadline, f"live client at seq {top} version {ver}, want {last_seq}/{last_version}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


async def test_offline_client_catches_up_with_one_sync_per_room(stack: Stack, redis: Redis) -> None:
    alice, bob, carol = make_user(stack.api), make_user(stack.api), make_user(stack.api)
    r1 = make_room(stack.api, alice, member_ids=[bob.id, carol.id])["id"]
    r2 = make_room(stack.api, alice, member_ids=[bob.id, carol.id])["id"]
    async with stack.client() as c:
        for i in range(10):
            await send(c, alice, r1, f"old {i}")
        await drain(stack, redis, r1)  # 1-10 of r1 only in PostgreSQL
        for i in range(5):
            await send(c, alice, r1, f"cached {i}")
            await send(c, bob, r2, f"r2 {i}")
        live = Follower(await WS.open(stack.server.ws_url, carol.access_token), {r1: {}, r2: {}})
        for rid in (r1, r2):
            live.states[rid].update({m["seq"]: m for m in await history(c, carol, rid)})
        off = await WS.open(stack.server.ws_url, bob.access_token)
        cursors = {rid: (hello_room(off, rid)["last_seq"], hello_room(off, rid)["last_version"]) for rid in (r1, r2)}
        assert cursors == {r1: (15, 0), r2: (5, 0)}
        mine = {rid: {m["seq"]: m for m in await history(c, bob, rid)} for rid in (r1, r2)}
        await off.close()

        # Bob is offline: edits, deletes and reactions on flushed, cached and new messages of both rooms.
        ok(await edit(c, alice, r1, 2, "old 1, edited"))
        ok(await edit(c, alice, r1, 12, "cached 1, edited"))
        ok(await delete(c, alice, r1, 3))
        ok(await react(c, carol, r1, 1, "👍"))
        ok(await react(c, alice, r1, 12, "🎉"))
        ok(await react(c, alice, r1, 12, "🎉", add=False))  # net nothing, but the state changed twice
        await drain(stack, redis, r1)  # part of the offline period's changes now in PostgreSQL only
        ok(await react(c, bob, r1, 5, "❤️"))  # from bob's other device: his sync must show it as `me`
        for i in range(3):
            await send(c, alice, r1, f"new {i}")  # 16, 17, 18
        ok(await edit(c, alice, r1, 17, "new 1, edited"))
        ok(await delete(c, alice, r1, 18))
        ok(await react(c, carol, r1, 16, "👀"))
        ok(await edit(c, alice, r1, 2, "old 1, edited twice"))
        ok(await edit(c, bob, r2, 1, "r2 0, edited"))
        ok(await delete(c, alice, r2, 2))  # the owner deletes bob's message
        ok(await react(c, carol, r2, 3, "👍"))
        ok(await react(c, alice, r2, 3, "👍"))
        await send(c, carol, r2, "r2 new")

        truth = {rid: await history(c, carol, rid) for rid in (r1, r2)}
        tops = {rid: (len(h), max(m["version"] for m in h)) for rid, h in truth.items()}
        for rid, (top, ver) in tops.items():
            await live.wait(rid, top, ver)

        back = await WS.open(stack.server.ws_url, bob.access_token)
        try:
            for rid in (r1, r2):
                hello = hello_room(back, rid)
                assert (hello["last_seq"], hello["last_version"]) == tops[rid], hello
                after_seq, after_version = cursors[rid]
                got = await ws_sync(back, rid, after_seq, after_version)  # the ONE sync of this room
                assert got["has_more"] is False and got["changes_has_more"] is False, got
                assert got["last_version"] == tops[rid][1]
                assert [m["seq"] for m in got["messages"]] == list(range(after_seq + 1, tops[rid][0] + 1))
                assert all(m["seq"] <= after_seq for m in got["changes"]), got["changes"]
                versions = [m["version"] for m in got["changes"]]
                assert versions == sorted(versions) and len({m["seq"] for m in got["changes"]}) == len(versions)
                for m in got["messages"] + got["changes"]:
                    mine[rid][m["seq"]] = m
                    assert_me(m, bob)
                assert {s: canon(m) for s, m in mine[rid].items()} == \
                    {s: canon(m) for s, m in live.states[rid].items()}, rid
                assert [mine[rid][s] for s in sorted(mine[rid])] == await history(c, bob, rid)
            assert next(r for r in mine[r1][5]["reactions"] if r["emoji"] == "❤️")["me"] is True
        finally:
            await back.close()
            await live.close()


# -- two editors of one message ----------------------------------------------------------------------

async def test_two_connections_editing_one_message_last_write_wins_everywhere(stack: Stack, redis: Redis) -> None:
    alice, bob = make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, member_ids=[bob.id])["id"]
    n = 25
    async with stack.client() as c:
        await send(c, alice, rid, "original")
        a1, a2, b = (await WS.open(stack.server.ws_url, alice.access_token),
                     await WS.open(stack.server.ws_url, alice.access_token),
                     await WS.open(stack.server.ws_url, bob.access_token))
        try:
            async def editor(ws: WS, tag: str) -> None:
                for k in range(n):
                    await ws.send({"type": "edit", "room_id": rid, "seq": 1, "body": f"{tag} {k}",
                                   "client_id": f"{tag}-{k}"})
                    await asyncio.sleep(0)

            await asyncio.gather(editor(a1, "a1"), editor(a2, "a2"))

            async def updates(ws: WS) -> list[dict[str, Any]]:
                got: list[dict[str, Any]] = []
                while len(got) < 2 * n:
                    frame = await ws.recv_until(lambda f: f["type"] in ("message_updated", "error"), timeout=20)
                    assert frame["type"] == "message_updated", frame
                    assert frame["change"] == "edit" and frame["room_id"] == rid, frame
                    got.append(frame["message"])
                return got

            seen = await asyncio.gather(updates(a1), updates(a2), updates(b))
            for got in seen:
                # every edit took one version, and each connection saw them in version order
                assert [m["version"] for m in got] == list(range(1, 2 * n + 1))
                assert {m["body"] for m in got} == {f"{t} {k}" for t in ("a1", "a2") for k in range(n)}
            winner = seen[0][-1]
            assert all(canon(got[-1]) == canon(winner) for got in seen)
            assert winner["edited_at"] is not None and winner["version"] == 2 * n
            one = ok(await c.get(f"/rooms/{rid}/messages/1", headers=bob.headers))
            assert canon(one) == canon(winner)
            await drain(stack, redis, rid)
            assert canon(ok(await c.get(f"/rooms/{rid}/messages/1", headers=bob.headers))) == canon(winner)
            # a reconnecting client converges to it too
            assert (await ws_sync(b, rid, 1, 0))["changes"] == [one]
        finally:
            for ws in (a1, a2, b):
                await ws.close()


# -- a tombstone's file -----------------------------------------------------------------------------------

def upload_ready(stack: Stack, user: TestUser, rid: str, name: str) -> dict[str, Any]:
    resp = stack.api.post(f"/rooms/{rid}/files", headers=user.headers,
                          files={"file": (name, samples.plain_png(), "image/png")})
    assert resp.status_code == 202, resp.text
    fid = resp.json()["id"]
    deadline = time.monotonic() + 30
    while True:
        meta = stack.api.get(f"/files/{fid}/meta", headers=user.headers).json()
        if meta["status"] != "processing":
            assert meta["status"] == "ready", meta
            return meta
        assert time.monotonic() < deadline, stack.worker.log_tail(40)
        time.sleep(0.1)


def stored(stack: Stack, file_id: str) -> list[Path]:
    return [p for p in stack.media_root.rglob("*") if p.is_file() and file_id in p.name]


async def test_deleting_a_file_message_removes_the_bytes(stack: Stack, redis: Redis) -> None:
    alice, bob = make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, is_private=True, member_ids=[bob.id])["id"]
    async with stack.client() as c:
        early = upload_ready(stack, alice, rid, "early.png")
        await drain(stack, redis, rid)  # its message is in PostgreSQL only when deleted
        late = upload_ready(stack, alice, rid, "late.png")  # its message still in the cache when deleted
        files = {m["id"]: stored(stack, m["id"]) for m in (early, late)}
        for fid, paths in files.items():
            assert paths, f"no bytes of {fid} under {stack.media_root}"
            assert (await c.get(f"/files/{fid}", headers=bob.headers)).status_code == 200
        quote_reply = await send(c, bob, rid, "nice picture", reply_to=late["seq"])
        assert quote_reply["reply_to"] == {"seq": late["seq"], "sender_id": alice.id, "excerpt": "late.png",
                                           "deleted": False}
        for meta in (early, late):
            tomb = ok(await delete(c, alice, rid, meta["seq"]))
            assert tomb["deleted"] is True and tomb["file"] is None and tomb["body"] == ""
        await drain(stack, redis, rid)
        for fid, paths in files.items():
            assert (await c.get(f"/files/{fid}", headers=alice.headers)).status_code in (404, 410)
            assert [p for p in paths if p.exists()] == [] and stored(stack, fid) == []
        rows = await pg_rows(rid)
        assert rows[early["seq"]]["file_id"] is None and rows[late["seq"]]["file_id"] is None
        for msg in await history(c, bob, rid):
            if msg["seq"] in (early["seq"], late["seq"]):
                assert msg["deleted"] is True and msg["file"] is None
        reply = ok(await c.get(f"/rooms/{rid}/messages/{quote_reply['seq']}", headers=alice.headers))
        assert reply["reply_to"] == {"seq": late["seq"], "sender_id": alice.id, "excerpt": "", "deleted": True}


# -- read markers ------------------------------------------------------------------------------------------

async def test_read_markers_of_two_connections_converge_and_never_move_back(stack: Stack, redis: Redis) -> None:
    alice, bob, stranger = make_user(stack.api), make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, member_ids=[bob.id])["id"]
    async with stack.client() as c:
        for i in range(40):
            await send(c, alice, rid, f"r{i}")
        b1, b2 = (await WS.open(stack.server.ws_url, bob.access_token),
                  await WS.open(stack.server.ws_url, bob.access_token))
        try:
            assert hello_room(b1, rid)["last_read_seq"] == 0 and hello_room(b1, rid)["unread_count"] == 40
            one = [5, 20, 3, 35, 10, 40, 7]
            two = [15, 2, 30, 25, 38, 1, 39]

            async def reader(ws: WS, seqs: list[int]) -> None:
                for s in seqs:
                    await ws.send({"type": "read", "room_id": rid, "seq": s})
                    await asyncio.sleep(0)

            await asyncio.gather(reader(b1, one), reader(b2, two))
            for ws in (b1, b2):
                # Both connections learn of the highest marker (b1 sent 40), and what each one is
                # told on the way there never goes backwards, whichever connection moved it.
                marks: list[int] = []
                while not marks or marks[-1] != 40:
                    frame = await ws.recv()
                    assert frame["type"] == "read", frame
                    assert frame["room_id"] == rid and frame["unread_count"] == 40 - frame["last_read_seq"]
                    assert frame["mention_count"] == 0
                    marks.append(frame["last_read_seq"])
                assert marks == sorted(marks), marks
            back = ok(await c.post(f"/rooms/{rid}/read", json={"seq": 12}, headers=bob.headers))
            assert back == {"room_id": rid, "last_read_seq": 40, "unread_count": 0, "mention_count": 0}
            answer = await b1.request({"type": "read", "room_id": rid, "seq": 9}, "read")
            assert answer["last_read_seq"] == 40  # a no-op is answered with the unchanged marker
            for i in range(5):
                await send(c, alice, rid, f"later {i}")
            got = ok(await c.get(f"/rooms/{rid}", headers=bob.headers))
            assert (got["last_seq"], got["last_read_seq"], got["unread_count"]) == (45, 40, 5)
            moved = ok(await c.post(f"/rooms/{rid}/read", json={"seq": 10**6}, headers=bob.headers))
            assert moved["last_read_seq"] == 45 and moved["unread_count"] == 0  # clamped to the last seq
            for ws in (b1, b2):
                frame = await ws.recv_until(lambda f: f["type"] == "read" and f["last_read_seq"] == 45)
                assert frame["unread_count"] == 0
            # A marker that moves reaches each of the user's connections exactly once: counted up
            # to a later message of the room, which travels the same events channel after it.
            await send(c, alice, rid, "46")
            for ws in (b1, b2):
                await ws.recv_until(lambda f: f["type"] == "message" and f["message"]["seq"] == 46)
            await b1.send({"type": "read", "room_id": rid, "seq": 46})
            await asyncio.sleep(0.2)  # the read is handled before the marker message is sent
            await send(c, alice, rid, "47")
            for ws in (b1, b2):
                frames = []
                while True:
                    frame = await ws.recv()
                    if frame["type"] == "message" and frame["message"]["seq"] == 47:
                        break
                    frames.append(frame)
                assert [f["last_read_seq"] for f in frames if f["type"] == "read"] == [46], frames
            moved = ok(await c.post(f"/rooms/{rid}/read", json={"seq": 10**6}, headers=bob.headers))
            assert moved["last_read_seq"] == 47
            for ws in (b1, b2):
                await ws.recv_until(lambda f: f["type"] == "read" and f["last_read_seq"] == 47)
            for bad in ({"seq": -1}, {"seq": "x"}, {}):
                err(await c.post(f"/rooms/{rid}/read", json=bad, headers=bob.headers), 422, "validation_failed")
            assert (await c.post(f"/rooms/{rid}/read", json={"seq": 1}, headers=stranger.headers)).status_code \
                in (403, 404)
            await drain(stack, redis, rid)
            conn = await asyncpg.connect(TEST_DB_URL)
            try:
                in_pg = await conn.fetchval("SELECT last_read_seq FROM memberships WHERE room_id = $1 "
                                            "AND user_id = $2", uuid.UUID(rid), uuid.UUID(bob.id))
            finally:
                await conn.close()
            assert in_pg == 47
            again = await WS.open(stack.server.ws_url, bob.access_token)
            assert hello_room(again, rid)["last_read_seq"] == 47 and hello_room(again, rid)["unread_count"] == 0
            await again.close()
        finally:
            await b1.close()
            await b2.close()


# -- unread and mention counts over 1,000 messages and a flush ------------------------------------------

async def test_unread_and_mention_counts_exact_after_1000_messages_across_a_flush(stack: Stack,
                                                                                  redis: Redis) -> None:
    alice, bob, carol = make_user(stack.api), make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, member_ids=[bob.id, carol.id])["id"]
    bodies: dict[int, str] = {}
    a = await WS.open(stack.server.ws_url, alice.access_token)
    bws = await WS.open(stack.server.ws_url, bob.access_token)

    async def burst(lo: int, hi: int) -> None:
        """Messages lo..hi-1 from alice, pipelined on one socket; some mention bob and/or carol."""
        texts = {}
        for i in range(lo, hi):
            text = f"plain {i}"
            if i % 50 == 0:
                text = f"hey @{bob.username.upper()} look at {i}"  # mentions are case-insensitive
            if i % 70 == 0:
                text = f"@{carol.username} and @{bob.username}: {i}"
            texts[f"k{i}"] = text
        for cid, text in texts.items():
            await a.send({"type": "send", "room_id": rid, "body": text, "client_id": cid})
        for _ in texts:
            ack = await a.recv_until(lambda f: f["type"] in ("ack", "error"), timeout=30)
            assert ack["type"] == "ack", ack
            bodies[ack["message"]["seq"]] = ack["message"]["body"]

    def mentions_of(user: TestUser, after: int, deleted: set[int]) -> int:
        tag = f"@{user.username}"
        return sum(1 for s, b in bodies.items() if s > after and s not in deleted and tag in b.lower())

    try:
        await burst(0, 600)
        marked = await bws.request({"type": "read", "room_id": rid, "seq": 400}, "read")
        assert marked["last_read_seq"] == 400 and marked["unread_count"] == 200
        assert marked["mention_count"] == mentions_of(bob, 400, set())
        await drain(stack, redis, rid)
        await burst(600, 1000)
        own = (await bws.request({"type": "send", "room_id": rid, "body": "bob was here"}, "ack"))["message"]["seq"]
        assert own == 1001
        bodies[own] = "bob was here"
        # a message mentioning bob after his marker, and one before it, are deleted
        after_marker = next(s for s in sorted(bodies) if s > own - 300 and "@" in bodies[s])
        before_marker = next(s for s in sorted(bodies) if s < 400 and "@" in bodies[s])
        async with stack.client() as c:
            ok(await delete(c, alice, rid, after_marker))
            ok(await delete(c, alice, rid, before_marker))
            deleted = {after_marker, before_marker}
            # bob's own send moved his marker to 1001; carol never read; alice sent 1-1000, so
            # her marker is at her last own message and bob's 1001 is unread for her
            want = {alice.id: (1000, 1, 0),
                    bob.id: (1001, 0, 0),
                    carol.id: (0, 1001, mentions_of(carol, 0, deleted))}
            assert want[carol.id][2] > 5

            async def check() -> None:
                for user in (alice, bob, carol):
                    ws = await WS.open(stack.server.ws_url, user.access_token)
                    h = hello_room(ws, rid)
                    await ws.close()
                    assert h["last_seq"] == 1001
                    assert (h["last_read_seq"], h["unread_count"], h["mention_count"]) == want[user.id], \
                        (user.username, h)
                    rooms = ok(await c.get("/rooms", params={"scope": "joined"}, headers=user.headers))["items"]
                    r = next(x for x in rooms if x["id"] == rid)
                    assert (r["last_seq"], r["last_read_seq"], r["unread_count"], r["mention_count"]) == \
                        (1001, *want[user.id]), (user.username, r)

            await check()
            # bob goes back to 400? never: and marking 700 does not move him either
            assert ok(await c.post(f"/rooms/{rid}/read", json={"seq": 700}, headers=bob.headers))[
                "last_read_seq"] == 1001
            # carol reads up to 500: what is left are the mentions after 500
            moved = ok(await c.post(f"/rooms/{rid}/read", json={"seq": 500}, headers=carol.headers))
            want[carol.id] = (500, 501, mentions_of(carol, 500, deleted))
            assert (moved["last_read_seq"], moved["unread_count"], moved["mention_count"]) == want[carol.id]
            await drain(stack, redis, rid)
            await check()
    finally:
        await a.close()
        await bws.close()


# -- search --------------------------------------------------------------------------------------------------

def word() -> str:
    return "zq" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10))


async def search(c: httpx.AsyncClient, user: TestUser, q: str, **params: Any) -> list[dict[str, Any]]:
    body = ok(await c.get("/search", params={"q": q, **params}, headers=user.headers))
    for item in body["items"]:
        for start, end in item["highlights"]:
            assert 0 <= start < end <= len(item["snippet"]), item
    return body["items"]


def found(items: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(it["room_id"], it["message"]["seq"]) for it in items]


async def test_search_finds_new_and_long_flushed_messages_never_deleted_or_foreign(stack: Stack,
                                                                                    redis: Redis) -> None:
    alice, carol = make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, is_private=True)["id"]
    secret = make_room(stack.api, carol, is_private=True)["id"]
    old, fresh, gone_old, gone_new, edited_from, edited_to, foreign = (word() for _ in range(7))
    async with stack.client() as c:
        s_old = (await send(c, alice, rid, f"the {old} was here"))["seq"]
        s_gone_old = (await send(c, alice, rid, f"delete me later {gone_old}"))["seq"]
        s_edit = (await send(c, alice, rid, f"typo {edited_from}"))["seq"]
        for i in range(60):
            await send(c, alice, rid, f"filler {i} common words")  # the old one is far from the newest
        await send(c, carol, secret, f"carol only {foreign}")
        await drain(stack, redis, rid)
        await drain(stack, redis, secret)
        s_fresh = (await send(c, alice, rid, f"just now {fresh}"))["seq"]
        s_gone_new = (await send(c, alice, rid, f"oops {gone_new}"))["seq"]
        ok(await delete(c, alice, rid, s_gone_new))  # deleted in the cache
        ok(await delete(c, alice, rid, s_gone_old))  # deleted after its flush; the change is not flushed yet
        ok(await edit(c, alice, rid, s_edit, f"fixed {edited_to}"))

        async def verify() -> None:
            got = await search(c, alice, old)
            assert found(got) == [(rid, s_old)], got
            assert got[0]["message"]["body"] == f"the {old} was here"
            hl = got[0]["highlights"][0]
            assert got[0]["snippet"][hl[0]:hl[1]].lower() == old
            assert found(await search(c, alice, fresh)) == [(rid, s_fresh)]
            assert found(await search(c, alice, fresh, room_id=rid)) == [(rid, s_fresh)]
            assert await search(c, alice, gone_new) == []
            assert await search(c, alice, gone_old) == []
            assert await search(c, alice, edited_from) == []
            edited = await search(c, alice, edited_to)
            assert found(edited) == [(rid, s_edit)] and edited[0]["message"]["edited_at"] is not None
            assert await search(c, alice, foreign) == []  # carol's private room never leaks
            assert found(await search(c, carol, foreign)) == [(secret, 1)]
            assert (await c.get("/search", params={"q": foreign, "room_id": secret},
                                headers=alice.headers)).status_code in (200, 403, 404)
            assert await search(c, carol, old) == []

        await verify()
        await drain(stack, redis, rid)  # the changes now in PostgreSQL too
        await verify()
        err(await c.get("/search", params={"q": ""}, headers=alice.headers), 422, "validation_failed")
        err(await c.get("/search", params={"q": "x" * 201}, headers=alice.headers), 422, "validation_failed")
        assert (await c.get("/search", params={"q": old})).status_code == 401


# -- replies ---------------------------------------------------------------------------------------------------

async def test_replies_quote_the_original_and_show_it_deleted(stack: Stack, redis: Redis) -> None:
    alice, bob = make_user(stack.api), make_user(stack.api)
    rid = make_room(stack.api, alice, member_ids=[bob.id])["id"]
    long_body = "x" * 100 + " and then some more words past the excerpt"
    async with stack.client() as c:
        orig = await send(c, alice, rid, long_body)
        short = await send(c, alice, rid, "short one")
        await drain(stack, redis, rid)  # both originals flushed; replies come from the cache
        a = await WS.open(stack.server.ws_url, alice.access_token)
        try:
            reply = await send(c, bob, rid, "replying", reply_to=orig["seq"])
            quote_ = {"seq": orig["seq"], "sender_id": alice.id, "excerpt": long_body[:120], "deleted": False}
            assert reply["reply_to"] == quote_
            live = await a.recv_until(lambda f: f["type"] == "message" and f["message"]["seq"] == reply["seq"])
            assert live["message"]["reply_to"] == quote_
            ws_reply = (await a.request({"type": "send", "room_id": rid, "body": "me too",
                                         "reply_to": short["seq"]}, "ack"))["message"]
            assert ws_reply["reply_to"]["excerpt"] == "short one"
        finally:
            await a.close()
        err(await c.post(f"/rooms/{rid}/messages", json={"body": "to nothing", "reply_to": 999},
                         headers=bob.headers), 422, "validation_failed")
        ok(await edit(c, alice, rid, short["seq"], "short one, edited"))
        ok(await delete(c, alice, rid, orig["seq"]))
        err(await c.post(f"/rooms/{rid}/messages", json={"body": "to a tombstone", "reply_to": orig["seq"]},
                         headers=bob.headers), 422, "validation_failed")
        tomb_quote = {"seq": orig["seq"], "sender_id": alice.id, "excerpt": "", "deleted": True}

        async def verify() -> None:
            by_seq = {m["seq"]: m for m in await history(c, alice, rid)}
            assert by_seq[reply["seq"]]["reply_to"] == tomb_quote
            assert by_seq[ws_reply["seq"]]["reply_to"]["excerpt"] == "short one, edited"
            assert ok(await c.get(f"/rooms/{rid}/messages/{reply['seq']}", headers=bob.headers))["reply_to"] \
                == tomb_quote

        await verify()
        await drain(stack, redis, rid)
        await verify()
