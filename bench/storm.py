"""The reconnect storm, generator side (`mode: storm` of bench/generator.py).

N clients connect (each waits for its `hello`), stay idle, are all closed at once; while they
are away some messages are sent to their rooms over HTTP; then all reconnect at once, each
sending `sync` from the last seq it had for each of its rooms, until it holds every message
up to the `last_seq` its new `hello` names. Measured: connections opened per second in the
first connect (the same way against the bare server: `bare: true`, which stops there), and
the time until every client has its `hello` and its missed messages.

A client closed with 1013 (try again later) waits what the close reason asks
("retry_after_ms=<n>", else 1 s) plus as much random jitter, and tries again; so does a
handshake refused with 503/429 (its Retry-After). Everything is bounded: per attempt, per
client (attempts) and the whole storm (`storm_timeout_s`). Loopback only.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench import procs
from bench.load import emit
from bench.stats import summarize
from bench.wsclient import WSConn

RETRY_RE = re.compile(r"retry_after_ms=(\d+)")
# How long a client waits for its hello before it drops the connection and tries again. Long:
# a server that queues connects (admission control) answers late rather than never, and a
# client that gives up early only joins the back of the queue again.
ATTEMPT_TIMEOUT_S = 30.0


class Client:
    """One storm client: its connection of the moment, what it has seen per room, its sync replies."""

    def __init__(self, index: int, token: str, rooms: list[str]) -> None:
        self.index, self.token, self.rooms = index, token, rooms
        self.conn: WSConn | None = None
        self.hello: asyncio.Future[dict[str, Any]] | None = None
        self.syncs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: dict[str, int] = {}  # room -> highest seq held (from hello before the outage, then syncs)
        self.missed = 0  # messages received through sync after the storm
        self.gaps = 0  # a sync reply that did not continue where the client was
        self.errors: Counter[str] = Counter()

    def on_text(self, conn: WSConn, data: bytes | memoryview) -> None:
        try:
            msg = orjson.loads(data)
        except ValueError:
            self.errors["bad_frame"] += 1
            return
        kind = msg.get("type")
        if kind == "hello":
            if self.hello is not None and not self.hello.done():
                self.hello.set_result(msg)
        elif kind == "sync":
            self.syncs.put_nowait(msg)
        elif kind == "error":
            self.errors[str(msg.get("code"))] += 1
            self.syncs.put_nowait(msg)  # a refused sync must not leave the client waiting


class Storm:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        parts = urlsplit(cfg["ws_url"])
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rooms: list[str] = cfg["rooms"]
        self.clients = [Client(i, spec["token"], [self.rooms[r] for r in spec["rooms"]])
                        for i, spec in enumerate(cfg["conns"])]
        self.retries: Counter[str] = Counter()  # why an attempt was retried
        self.max_attempts = int(cfg.get("max_attempts", 30))

    # -- one connection attempt, retried as the server asks ----------------------------
    async def _attempt(self, c: Client) -> dict[str, Any] | str:
        """The hello frame, or why not (a retry reason); the connection stays on `c.conn`."""
        loop = asyncio.get_running_loop()
        c.hello = loop.create_future()
        url = f"{self.cfg['ws_url']}?token={c.token}"
        try:
            _t, conn = await asyncio.wait_for(
                loop.create_connection(lambda: WSConn(url, c.on_text, c.index), self.host, self.port),
                ATTEMPT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            return f"connect: {type(exc).__name__}"
        c.conn = conn
        # The hello, or the socket going away first (a close with 1013, a refused handshake).
        done, _ = await asyncio.wait([c.hello, conn.lost], timeout=ATTEMPT_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if c.hello in done:
            return c.hello.result()
        conn.close()
        if conn.refused_status:
            return f"http_{conn.refused_status}"
        if conn.close_code is not None:
            return f"close_{conn.close_code}"
        return "timeout" if not done else "lost"

    def _backoff(self, c: Client, why: str) -> float:
        """Seconds to wait before the next attempt: what the server asked, plus as much jitter."""
        base = 1.0
        conn = c.conn
        if why == "close_1013" and conn is not None:
            m = RETRY_RE.search(conn.close_reason)
            base = int(m.group(1)) / 1000 if m else 1.0
        elif why.startswith("http_") and conn is not None and conn.retry_after_s is not None:
            base = conn.retry_after_s
        elif not (why == "close_1013" or why in ("http_503", "http_429")):
            base = 0.5  # not a server's "later": a lost or refused connection, retried sooner
        return base + random.uniform(0, base)

    async def connect(self, c: Client, deadline: float) -> float | None:
        """Connect until a hello arrives (or attempts/deadline run out); its time, else None."""
        for _ in range(self.max_attempts):
            got = await self._attempt(c)
            if isinstance(got, dict):
                return time.perf_counter()
            self.retries[got] += 1
            wait = self._backoff(c, got)
            if time.perf_counter() + wait > deadline:
                break
            await asyncio.sleep(wait)
        c.errors["gave_up"] += 1
        return None

    # -- phases ----------------------------------------------------------------------------
    async def first_connect(self) -> dict[str, Any]:
        """Everyone connects (bounded handshakes in flight); connections opened per second."""
        pid = self.cfg.get("server_pid")
        settle = float(self.cfg.get("settle_s", 2))
        rss0 = procs.tree_rss_bytes(pid) if pid else 0
        sem = asyncio.Semaphore(int(self.cfg.get("concurrency", 500)))
        times: list[float] = []
        deadline = time.perf_counter() + float(self.cfg.get("connect_timeout_s", 300))
        t0 = time.perf_counter()

        async def one(c: Client) -> None:
            async with sem:
                t = await self.connect(c, deadline)
            if t is not None:
                times.append(t - t0)
                assert c.hello is not None
                for r in c.hello.result().get("rooms", []):
                    c.seen[r["room_id"]] = int(r.get("last_seq") or 0)
                if len(times) % 2000 == 0:
                    emit("progress", msg=f"connected {len(times)}/{len(self.clients)}")

        await asyncio.gather(*(one(c) for c in self.clients))
        times.sort()
        await asyncio.sleep(settle)
        rss = procs.tree_rss_bytes(pid) if pid else 0
        n = len(times)

        def rate_at(k: int) -> float | None:
            return round(k / times[k - 1], 1) if n >= k and times[k - 1] > 0 else None

        marks = sorted({m for m in (5000, 10000, n) if 0 < m <= n})
        return {"connected": n, "requested": len(self.clients), "connect_s": round(times[-1], 3) if times else None,
                "connects_per_s": rate_at(n), "connects_per_s_at": {str(m): rate_at(m) for m in marks},
                "seconds_to": {str(m): round(times[m - 1], 3) for m in marks},
                "rss_before_mb": round(rss0 / 2**20, 1), "rss_after_mb": round(rss / 2**20, 1),
                "rss_per_connection_kb": round((rss - rss0) / max(1, n) / 1024, 2) if pid else None,
                "retries": dict(self.retries)}

    def close_all(self) -> None:
        for c in self.clients:
            if c.conn is not None:
                c.conn.close()

    async def send_missed(self) -> dict[str, Any]:
        """Messages sent while everyone is away: `missed_per_room` per room over HTTP, by its owner."""
        import httpx

        per_room = int(self.cfg.get("missed_per_room", 2))
        owners: list[str] = self.cfg["owner_tokens"]
        sem = asyncio.Semaphore(16)
        failures: Counter[str] = Counter()
        sent = 0

        async def one(client: httpx.AsyncClient, room: str, token: str, k: int) -> None:
            nonlocal sent
            async with sem:
                try:
                    resp = await client.post(f"/rooms/{room}/messages", json={"body": f"missed {k}"},
                                             headers={"Authorization": f"Bearer {token}"})
                except httpx.HTTPError as exc:
                    failures[type(exc).__name__] += 1
                    return
            if resp.status_code == 201:
                sent += 1
            else:
                failures[f"http_{resp.status_code}"] += 1

        t = time.perf_counter()
        async with httpx.AsyncClient(base_url=self.cfg["http_url"], timeout=30.0) as client:
            await asyncio.gather(*(one(client, room, owners[r], k) for r, room in enumerate(self.rooms)
                                   for k in range(per_room)))
        return {"sent": sent, "per_room": per_room, "failures": dict(failures), "seconds": round(time.perf_counter() - t, 2)}

    async def catch_up(self, c: Client, hello: dict[str, Any]) -> bool:
        """`sync` each room from the last seq held until the hello's last_seq is reached."""
        limit = int(self.cfg.get("sync_limit", 100))
        assert c.conn is not None
        for r in hello.get("rooms", []):
            room, target = r["room_id"], int(r.get("last_seq") or 0)
            have = c.seen.get(room, 0)
            while have < target:
                if not c.conn.send_text(orjson.dumps({"type": "sync", "room_id": room, "after_seq": have,
                                                      "limit": limit})):
                    return False
                try:
                    reply = await asyncio.wait_for(c.syncs.get(), ATTEMPT_TIMEOUT_S)
                except asyncio.TimeoutError:
                    c.errors["sync_timeout"] += 1
                    return False
                if reply.get("type") != "sync":
                    return False
                seqs = [int(m["seq"]) for m in reply.get("messages", [])]
                if not seqs or seqs[0] != have + 1 or any(b != a + 1 for a, b in zip(seqs, seqs[1:])):
                    c.gaps += 1
                    return False
                c.missed += len(seqs)
                have = seqs[-1]
            c.seen[room] = have
        return True

    async def storm(self) -> dict[str, Any]:
        """Everyone reconnects at once and catches up; per-client times from the storm's start."""
        pid, rpid = self.cfg.get("server_pid"), self.cfg.get("redis_pid")
        sem = asyncio.Semaphore(int(self.cfg.get("concurrency", 500)))
        hello_t: list[float] = []
        done_t: list[float] = []
        failed: Counter[str] = Counter()
        self.retries.clear()
        timeout = float(self.cfg.get("storm_timeout_s", 120))
        t0 = time.perf_counter()
        deadline = t0 + timeout
        cpu0 = procs.tree_cpu_seconds(pid) if pid else 0.0
        rcpu0 = procs.cpu_seconds([rpid]) if rpid else 0.0

        async def one(c: Client) -> None:
            async with sem:
                t = await self.connect(c, deadline)
                if t is None:
                    failed["no_hello"] += 1
                    return
                hello_t.append(t - t0)
                assert c.hello is not None
                if await self.catch_up(c, c.hello.result()):
                    done_t.append(time.perf_counter() - t0)
                else:
                    failed["not_caught_up"] += 1

        try:
            await asyncio.wait_for(asyncio.gather(*(one(c) for c in self.clients)), timeout + 5)
        except asyncio.TimeoutError:
            failed["storm_timeout"] += 1
        wall = time.perf_counter() - t0
        cpu = (procs.tree_cpu_seconds(pid) - cpu0) if pid else 0.0
        rcpu = (procs.cpu_seconds([rpid]) - rcpu0) if rpid else 0.0
        n = len(self.clients)
        errors: Counter[str] = Counter()
        for c in self.clients:
            errors.update(c.errors)
        all_in = len(done_t) == n
        return {"clients": n, "hello": len(hello_t), "caught_up": len(done_t),
                "all_caught_up_s": round(max(done_t), 3) if all_in and done_t else None,
                "all_hello_s": round(max(hello_t), 3) if len(hello_t) == n and hello_t else None,
                "hello_s": summarize(hello_t, 1.0), "caught_up_s": summarize(done_t, 1.0),
                "reconnects_per_s": round(len(hello_t) / max(hello_t), 1) if hello_t else None,
                "missed_received": sum(c.missed for c in self.clients),
                "gaps": sum(c.gaps for c in self.clients), "failed": dict(failed), "errors": dict(errors),
                "retries": dict(self.retries), "wall_s": round(wall, 3),
                "server_cpu_share": round(cpu / max(wall, 1e-9), 3), "redis_cpu_share": round(rcpu / max(wall, 1e-9), 3)}


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    s = Storm(cfg)
    emit("progress", msg=f"first connect: {len(s.clients)} clients, {cfg.get('concurrency', 500)} handshakes in flight")
    first = await s.first_connect()
    emit("progress", msg=f"{first['connected']} connected in {first['connect_s']} s "
                         f"({first['connects_per_s']} connections/s), {first['rss_per_connection_kb']} KiB each")
    out: dict[str, Any] = {"mode": "storm", "first_connect": first}
    if cfg.get("bare") or first["connected"] < len(s.clients):
        s.close_all()
        if first["connected"] < len(s.clients):
            out["storm"] = None
            out["note"] = "not every client connected the first time: no storm"
        return out
    s.close_all()
    emit("progress", msg="all closed at once; sending the missed messages")
    await asyncio.sleep(float(cfg.get("outage_s", 1.0)))
    out["missed_sent"] = await s.send_missed()
    emit("progress", msg=f"outage: {out['missed_sent']['sent']} messages sent; everyone reconnects now")
    out["storm"] = st = await s.storm()
    want = sum(len(c.rooms) for c in s.clients) * int(cfg.get("missed_per_room", 2))
    st["missed_expected"] = want if not out["missed_sent"]["failures"] else None
    s.close_all()
    emit("progress", msg=f"storm: {st['caught_up']}/{st['clients']} caught up, all within "
                         f"{st['all_caught_up_s']} s (hello p99 {st['hello_s']['p99']} s), retries {st['retries']}")
    return out
