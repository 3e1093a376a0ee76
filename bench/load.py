"""The generator's bookkeeping: connections, open-loop sending, acks, deliveries, one step's figures.

Every message k carries its send time (time.time_ns, same machine) and k in its body
and `client_id`, so each ack and each delivery is matched to its message. Deliveries
are checked per connection and room against the seq order (a repeat or a step back is
a duplicate), and per message against the room's expected receivers (lost).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from array import array
from collections import Counter
from typing import Any

import orjson

from bench import procs
from bench.stats import summarize
from bench.wsclient import WSConn, open_ws

# A generator using more than this share of its core, or lagging its schedule by more
# than this at p99, is saturated: its numbers bound the generator, not the server.
SATURATED_CPU_SHARE = 0.90
SATURATED_LAG_P99_MS = 5.0
MAX_BURST = 200  # sends per loop turn before letting received frames in
MIN_SLEEP_S = 0.001


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Load:
    """Connections plus the bookkeeping of every message: who sent it, acks, deliveries."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.rooms: list[str] = cfg["rooms"]
        self.room_index = {room_id: i for i, room_id in enumerate(self.rooms)}
        cap = int(cfg.get("capacity", 0)) + 16
        self.send_ns = array("q", bytes(8 * cap))
        self.state = bytearray(cap)  # 0 pending, 1 acked, 2 rejected (error frame)
        self.deliv = array("H", bytes(2 * cap))  # in-order deliveries per message
        self.msg_room = array("I", bytes(4 * cap))
        self.fanout: list[int] = [0] * len(self.rooms)  # expected receivers per message of a room
        self.window = (0, 0)  # message numbers whose latencies are recorded
        self.ack_lat = array("q")
        self.del_lat = array("q")
        self.dups = 0
        self.foreign = 0
        self.errors: Counter[str] = Counter()
        self.acked_total = 0
        self.resolved_total = 0  # acked + rejected: a send the server answered
        self.expected_total = 0
        self.delivered_total = 0
        self.conns: list[WSConn] = []
        self.connect_s = 0.0
        self.connect_failures: dict[str, int] = {}
        self.hello: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pad = "x" * max(0, int(cfg.get("body_bytes", 100)) - 32)
        # The `reads` scenario: every delivered message is answered with a `read` frame up to its
        # seq (a client showing the room marks it read), and the `read` events coming back counted.
        self.mark_reads = False
        self.reads_sent = 0
        self.reads_received = 0

    # -- receiving (hot path) --------------------------------------------------
    def on_text(self, conn: WSConn, data: bytes) -> None:
        try:
            self._on_text(conn, data)
        except (ValueError, KeyError, TypeError, IndexError):  # not a frame of ours: count, never crash
            self.foreign += 1

    def _on_text(self, conn: WSConn, data: bytes) -> None:
        msg = orjson.loads(data)
        kind = msg.get("type")
        if kind == "message":
            m = msg["message"]
            body = m.get("body") or ""
            now = time.time_ns()
            if len(body) < 21 or body[19] != ":":
                self.foreign += 1
                return
            room, seq = m["room_id"], m["seq"]
            if seq <= conn.last_seq.get(room, 0):
                self.dups += 1  # a duplicate, or out of seq order: both break the contract
                return
            conn.last_seq[room] = seq
            if self.mark_reads and conn.send_text(b'{"type":"read","room_id":"%s","seq":%d}' % (room.encode(), seq)):
                self.reads_sent += 1
            k = int(body[20:body.index(":", 20)])
            self.deliv[k] += 1
            self.delivered_total += 1
            lo, hi = self.window
            if lo <= k < hi:
                self.del_lat.append((now - int(body[:19])) // 1000)
        elif kind == "ack":
            k = int(msg["client_id"])
            if self.state[k] == 0:
                self.state[k] = 1
                self.acked_total += 1
                self.resolved_total += 1
                self.expected_total += self.fanout[self.msg_room[k]]
                lo, hi = self.window
                if lo <= k < hi:
                    self.ack_lat.append((time.time_ns() - self.send_ns[k]) // 1000)
        elif kind == "error":
            ref = msg.get("ref") or ""
            self.errors[str(msg.get("code"))] += 1
            if ref.isdigit() and self.state[int(ref)] == 0:
                self.state[int(ref)] = 2
                self.resolved_total += 1
        elif kind == "read":
            self.reads_received += 1
        elif kind == "hello":
            for r in msg.get("rooms", []):
                conn.last_seq[r["room_id"]] = int(r.get("last_seq") or 0)
            fut = self.hello.get(conn.index)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    # -- connecting ----------------------------------------------------------
    async def connect_all(self, specs: list[dict[str, Any]], offset: int = 0) -> list[WSConn | None]:
        """Open one connection per spec (bounded concurrency); None where it failed.

        `offset` numbers the connections of a second batch after those of the first.
        """
        url = self.cfg["ws_url"]
        sem = asyncio.Semaphore(int(self.cfg.get("connect_concurrency", 100)))
        out: list[WSConn | None] = [None] * len(specs)
        failures: Counter[str] = Counter()
        done = 0
        loop = asyncio.get_running_loop()

        async def one(i: int, spec: dict[str, Any]) -> None:
            nonlocal done
            async with sem:
                self.hello[offset + i] = loop.create_future()
                try:
                    conn = await open_ws(f"{url}?token={spec['token']}", self.on_text, index=offset + i)
                    await asyncio.wait_for(self.hello[offset + i], 15.0)
                    out[i] = conn
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                done += 1
                if done % 1000 == 0:
                    emit("progress", msg=f"connected {offset + done}/{offset + len(specs)}")

        t = time.perf_counter()
        await asyncio.gather(*(one(i, s) for i, s in enumerate(specs)))
        self.connect_s += time.perf_counter() - t
        for reason, n in failures.items():
            self.connect_failures[reason] = self.connect_failures.get(reason, 0) + n
        self.conns += [c for c in out if c is not None]
        return out

    def set_fanout(self, conns: list[WSConn | None], specs: list[dict[str, Any]]) -> None:
        """Expected receivers of a room's message: its open connections minus the sender's."""
        counts = [0] * len(self.rooms)
        for conn, spec in zip(conns, specs):
            if conn is not None:
                for r in spec["rooms"]:
                    counts[r] += 1
        self.fanout = [max(0, c - 1) for c in counts]

    # -- sending ---------------------------------------------------------------
    def send(self, k: int, conn: WSConn, room: int) -> None:
        ts = time.time_ns()
        body = f"{ts:019d}:{k}:{self.pad}"
        self.send_ns[k] = ts
        self.msg_room[k] = room
        frame = orjson.dumps({"type": "send", "room_id": self.rooms[room], "body": body, "client_id": str(k)})
        if not conn.send_text(frame):
            self.state[k] = 2
            self.resolved_total += 1
            self.errors["connection_closed"] += 1

    def snapshot(self) -> dict[str, float]:
        pid, rpid, db = self.cfg.get("server_pid"), self.cfg.get("redis_pid"), self.cfg.get("db_name")
        return {"t": time.perf_counter(), "gen_cpu": own_cpu(),
                "server_cpu": procs.tree_cpu_seconds(pid) if pid else 0.0,
                "redis_cpu": procs.cpu_seconds([rpid]) if rpid else 0.0,
                # The machine's PostgreSQL is not ours to pin; its backends' CPU is measured apart.
                "db_cpu": procs.cpu_seconds(procs.pg_backend_pids(db)) if db else 0.0,
                "core_busy": procs.core_busy_seconds(procs.SERVER_CORE),
                "reads_sent": self.reads_sent, "reads_received": self.reads_received}

    async def run_step(self, rate: float, warmup_s: float, duration_s: float, k0: int,
                       senders: list[tuple[WSConn, int]], drain_s: float) -> dict[str, Any]:
        """Open loop: message i is due at t0 + i/rate, whatever the acks do."""
        n_warm, n_meas = int(rate * warmup_s), max(1, int(rate * duration_s))
        n = n_warm + n_meas
        if k0 + n > len(self.state) - 16:
            raise RuntimeError("message capacity exceeded (bench bug)")
        self.window = (k0 + n_warm, k0 + n)
        self.ack_lat, self.del_lat = array("q"), array("q")
        dups0, errors0, resolved0 = self.dups, Counter(self.errors), self.resolved_total
        lags = array("q")
        n_senders = len(senders)
        start = self.snapshot() if n_warm == 0 else None
        t0 = time.perf_counter() + 0.01
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            burst_end = min(due, i + MAX_BURST)
            while i < burst_end:
                if i == n_warm and start is None:
                    start = self.snapshot()
                if i >= n_warm:
                    lags.append(int((time.perf_counter() - t0 - i / rate) * 1e6))
                conn, room = senders[(k0 + i) % n_senders]
                self.send(k0 + i, conn, room)
                i += 1
            if i >= n:
                break
            delay = t0 + i / rate - time.perf_counter()
            # The loop's timers have 1 ms resolution: a shorter sleep returns at once and the
            # loop would spin. So the schedule is kept per millisecond: what falls due within
            # one goes out in one burst (its lag is measured), and behind schedule we only yield.
            await asyncio.sleep(max(delay, MIN_SLEEP_S) if delay > 0 else 0)
        assert start is not None
        end = self.snapshot()
        end["server_rss"] = procs.tree_rss_bytes(self.cfg["server_pid"]) if self.cfg.get("server_pid") else 0
        # Drain: wait (bounded) for every ack and every expected delivery.
        deadline = time.perf_counter() + drain_s
        while time.perf_counter() < deadline:
            if self.resolved_total - resolved0 >= n and self.delivered_total >= self.expected_total:
                break
            await asyncio.sleep(0.05)
        return self.step_result(rate, k0, n, start, end, lags, dups0, errors0)

    def tally(self, k0: int, n: int) -> dict[str, int]:
        """Messages k0..k0+n-1 as they stand now: acked, rejected, lost and extra deliveries."""
        acked = rejected = lost = expected = extra = delivered_unacked = 0
        state, deliv, fan, room_of = self.state, self.deliv, self.fanout, self.msg_room
        for k in range(k0, k0 + n):
            st, got = state[k], deliv[k]
            if st == 1:
                acked += 1
                want = fan[room_of[k]]
                expected += want
                if got < want:
                    lost += want - got
                elif got > want:
                    extra += got - want
            else:
                rejected += st == 2
                delivered_unacked += got
        return {"acked": acked, "rejected": rejected, "lost": lost, "expected": expected, "extra": extra,
                "delivered_unacked": delivered_unacked, "unacked": n - acked - rejected}

    async def settle(self, k0: int, n: int, timeout_s: float) -> dict[str, int]:
        """Wait (bounded) until the step's messages are all answered and delivered; then tally."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            t = self.tally(k0, n)
            if t["lost"] == 0 and t["unacked"] == 0:
                return t
            await asyncio.sleep(0.25)
        return self.tally(k0, n)

    def step_result(self, rate: float, k0: int, n: int, start: dict[str, float], end: dict[str, float],
                    lags: array, dups0: int, errors0: Counter[str]) -> dict[str, Any]:
        t = self.tally(k0, n)
        acked, rejected, lost, expected = t["acked"], t["rejected"], t["lost"], t["expected"]
        extra, delivered_unacked = t["extra"], t["delivered_unacked"]
        state, deliv = self.state, self.deliv
        lo, hi = self.window
        wall = max(1e-9, end["t"] - start["t"])
        window_acked = sum(1 for k in range(lo, hi) if state[k] == 1)
        window_deliv = sum(deliv[k] for k in range(lo, hi))
        ack = summarize(self.ack_lat, 1e-3)
        dlv = summarize(self.del_lat, 1e-3)
        lag = summarize(lags, 1e-3)
        gen_share = (end["gen_cpu"] - start["gen_cpu"]) / wall
        server_cpu = end["server_cpu"] - start["server_cpu"]
        redis_cpu = end["redis_cpu"] - start["redis_cpu"]
        db_cpu = end["db_cpu"] - start["db_cpu"]
        dups = self.dups - dups0 + extra
        errors = dict(self.errors - errors0)
        unacked = n - acked - rejected
        reasons = []
        if gen_share > SATURATED_CPU_SHARE:
            reasons.append(f"generator CPU {gen_share:.0%}")
        if (lag["p99"] or 0) > SATURATED_LAG_P99_MS:
            reasons.append(f"send lag p99 {lag['p99']:.1f} ms")
        saturated = bool(reasons)
        bound = float(self.cfg.get("p99_bound_ms", 100))
        passed = (lost == 0 and dups == 0 and rejected == 0 and unacked == 0 and delivered_unacked == 0
                  and dlv["p99"] is not None and dlv["p99"] <= bound)
        per_k = 1000.0 / max(1, hi - lo)
        return {
            # The measured window on this process's perf_counter (the stack scenario's flush sampler).
            "t_start": start["t"], "t_end": end["t"],
            "k0": k0, "rate": rate, "sent": n, "acked": acked, "rejected": rejected, "unacked": unacked,
            "errors": errors, "expected_deliveries": expected, "lost": lost, "duplicates": dups,
            "delivered_unacked": delivered_unacked,
            "window_s": round(wall, 3), "accepted_per_s": round(window_acked / wall, 1),
            "deliveries_per_s": round(window_deliv / wall, 1),
            "ack_ms": ack, "delivery_ms": dlv, "send_lag_ms": lag,
            "server_cpu_s": round(server_cpu, 3), "server_cpu_share": round(server_cpu / wall, 3),
            "server_cpu_s_per_1000_msgs": round(server_cpu * per_k, 4),
            "server_cpu_us_per_msg": round(server_cpu * per_k * 1000, 1),
            "redis_cpu_s_per_1000_msgs": round(redis_cpu * per_k, 4),
            "server_redis_cpu_share": round((server_cpu + redis_cpu) / wall, 3),
            "postgres_cpu_s_per_1000_msgs": round(db_cpu * per_k, 4),
            "postgres_cpu_share": round(db_cpu / wall, 3),
            "server_rss_mb": round(end.get("server_rss", 0) / 2**20, 1),
            # Busy time of the server core not spent by the server tree or its Redis: other
            # processes of the (shared) machine competing with the server during the window.
            "server_core_foreign_share": round(max(0.0, (end["core_busy"] - start["core_busy"]) - server_cpu
                                                   - redis_cpu) / wall, 3),
            "read_frames_per_s": round((end["reads_sent"] - start["reads_sent"]) / wall, 1),
            "read_events_per_s": round((end["reads_received"] - start["reads_received"]) / wall, 1),
            "generator_cpu_share": round(gen_share, 3), "generator_saturated": saturated,
            "generator_saturated_by": ", ".join(reasons),
            "passed": passed,
        }


def sender_list(conns: list[WSConn | None], specs: list[dict[str, Any]],
                only_rooms: set[int] | None = None) -> list[tuple[WSConn, int]]:
    """Senders interleaved across rooms, so consecutive messages hit different rooms."""
    by_rank: dict[int, list[tuple[WSConn, int]]] = {}
    seen: Counter[int] = Counter()
    for conn, spec in zip(conns, specs):
        if conn is None or not spec.get("sender"):
            continue
        room = spec["rooms"][0]
        if only_rooms is not None and room not in only_rooms:
            continue
        by_rank.setdefault(seen[room], []).append((conn, room))
        seen[room] += 1
    return [s for rank in sorted(by_rank) for s in by_rank[rank]]


_stdin: asyncio.StreamReader | None = None


async def wait_stdin_go(timeout: float) -> None:
    """Block until the bench writes a line on stdin (bounded); may be called again and again."""
    global _stdin
    if _stdin is None:  # stdin is connected to the loop once: a second pipe transport would fail
        loop = asyncio.get_running_loop()
        _stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(_stdin), sys.stdin)  # type: ignore[arg-type]
    await asyncio.wait_for(_stdin.readline(), timeout)
