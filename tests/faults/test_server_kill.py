"""kill -9 a server process that holds WebSocket clients while messages keep coming (sent over
HTTP to a second server process). The clients reconnect to a new server process on the same
address, `sync` from the last seq they saw, and end with every message of every room: no gap.

The worker flushes during the test with a short cache tail, so the catch-up reads PostgreSQL
and Redis both."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.faults._kit import Clock, Load, report, users_and_rooms
from tests.faults._procs import start_server
from tests.wsclient import WS

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ROOMS = 3
USERS = 4
CLIENTS_PER_USER = 3


class Client:
    """A WebSocket client as an app would write one: reconnects, and syncs each room from the
    highest seq below which it has seen everything."""

    def __init__(self, url: str, token: str) -> None:
        self.url = f"{url}?token={token}"
        self.seen: dict[str, dict[int, str]] = {}
        self.connects = 0
        self.closed_by_server = 0
        self.by_sync = 0
        self.syncs = 0
        self.connected = asyncio.Event()
        self.stop = asyncio.Event()

    def contiguous(self, room: str) -> int:
        seqs = self.seen.setdefault(room, {})
        n = 0
        while n + 1 in seqs:
            n += 1
        return n

    async def _sync(self, ws: WS, room: str) -> None:
        self.syncs += 1
        await ws.send({"type": "sync", "room_id": room, "after_seq": self.contiguous(room), "limit": 100})

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                ws = await WS.open(self.url)
                try:
                    self.connects += 1
                    hello = ws.hello
                    self.connected.set()
                    for r in hello["rooms"]:
                        if r["last_seq"] > self.contiguous(r["room_id"]):
                            await self._sync(ws, r["room_id"])
                    while not self.stop.is_set():
                        try:
                            frame = await ws.recv(0.5)
                        except asyncio.TimeoutError:
                            continue
                        kind = frame.get("type")
                        if kind == "message":
                            m = frame["message"]
                            self.seen.setdefault(m["room_id"], {})[m["seq"]] = m["id"]
                        elif kind == "sync":
                            room = frame["room_id"]
                            for m in frame["messages"]:
                                if m["seq"] not in self.seen.setdefault(room, {}):
                                    self.by_sync += 1
                                self.seen[room][m["seq"]] = m["id"]
                            if frame["has_more"]:
                                await self._sync(ws, room)
                        elif kind == "resync":
                            for room in ([frame["room_id"]] if frame.get("room_id") else list(self.seen)):
                                await self._sync(ws, room)
                finally:
                    await ws.close()
            except (ConnectionClosed, InvalidStatus, OSError, asyncio.TimeoutError):
                self.connected.clear()
                self.closed_by_server += 1
                await asyncio.sleep(0.2)  # reconnect backoff


@pytest.mark.timeout(150)
async def test_server_killed_clients_reconnect_and_sync_without_gaps(stack) -> None:
    clock = Clock()
    env = {"FLUSH_BACKLOG_THRESHOLD": "50", "CACHE_TAIL": "20"}
    doomed, doomed_base = stack.server(name="server-1", **env)
    sender_srv, sender_base = stack.server(name="server-2", **env)
    stack.worker(**env)
    users, rooms = users_and_rooms(sender_base, ROOMS, n_users=USERS)
    room_ids = [r["id"] for r in rooms]
    ws_url = doomed_base.replace("http://", "ws://") + "/ws"
    port = int(doomed_base.rsplit(":", 1)[1])

    clients = [Client(ws_url, u.access_token) for u in users for _ in range(CLIENTS_PER_USER)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 20)
    load = Load(sender_base, users, room_ids, senders=4, pause_s=0.01, tag="live").start()
    try:
        await load.until_acked(300)
        doomed.kill9()
        t_kill = time.monotonic()
        acked_at_kill = len(load.ledger.acked)
        await asyncio.sleep(0.5)
        assert not any(c.connected.is_set() for c in clients), "clients did not notice the kill"
        # A new server process on the same address (a restart behind the load balancer).
        reborn, _ = start_server({**stack.env, **env}, stack.log_dir, name="server-3", port=port)
        stack.procs.append(reborn)
        t_up = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 30)
        reconnected_s = time.monotonic() - t_kill
        acked_while_away = len(load.ledger.acked) - acked_at_kill
        await load.until_acked(len(load.ledger.acked) + 300)
    finally:
        await load.finish()
    # Every acked message, by room: (seq -> id).
    want: dict[str, dict[int, str]] = {r: {} for r in room_ids}
    for mid, (room, seq) in load.ledger.acked.items():
        want[room][seq] = mid
    top = {r: max(want[r]) for r in room_ids}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(c.contiguous(r) >= top[r]
                                                  for c in clients for r in room_ids):
        await asyncio.sleep(0.1)
    for c in clients:
        c.stop.set()
    await asyncio.gather(*tasks)

    gaps = {}
    wrong = 0
    for i, c in enumerate(clients):
        for r in room_ids:
            missing = [s for s in range(1, top[r] + 1) if s not in c.seen.get(r, {})]
            if missing:
                gaps[(i, r)] = missing[:10]
            wrong += sum(1 for s, mid in want[r].items() if c.seen.get(r, {}).get(s) not in (None, mid))
    report("server kill -9, clients reconnect + sync",
           load=f"{len(clients)} WS clients, {ROOMS} rooms, 4 HTTP senders",
           acked=len(load.ledger.acked), acked_while_clients_away=acked_while_away,
           server_restart_s=t_up - t_kill, all_reconnected_s=reconnected_s,
           min_recovered_by_sync=min(c.by_sync for c in clients), syncs=sum(c.syncs for c in clients),
           connects=sum(c.connects for c in clients), client_gaps=len(gaps), wrong_message_at_seq=wrong,
           failed_sends=load.ledger.failed, total_s=clock())
    assert acked_while_away > 0, "no message was sent while the clients were away"
    assert all(c.connects >= 2 for c in clients)
    assert all(c.by_sync > 0 for c in clients), "some client recovered nothing through sync"
    assert gaps == {}, f"{len(gaps)} (client, room) pairs with gaps, e.g. {next(iter(gaps.items()))}"
    assert wrong == 0
    assert sender_srv.alive() and reborn.alive()
