"""Fan-out with processes (issue 13 item 2): CPU per delivered message per server process with
1, 2 and 4 server processes, FANOUT_CHANNELS=global vs rooms.

    .venv/bin/python -m bench.fanout_scale [--rooms 24] [--members 5] [--rate 240] [--seconds 8]

Rooms are partitioned by process: every connection of room i goes to process i % N, so a
process holds 1/N of the rooms. Each room has `members` users, one connection each; one
member per room sends over its WebSocket, all rooms together at `rate` messages/s (the same
total for every N, well below saturation: the servers, Redis and this generator share two
cores, so what is measured is CPU seconds, not throughput). Per process: CPU seconds of its
process tree during the window / messages delivered to its connections (acks count as
deliveries). Global mode: every process reads and decodes every room's events; rooms mode:
only its own rooms'. Every connection must get every message of its room once, in order.

Uses bench.stack.Stack (its own Redis and database; its server only creates the rooms), then
per step N servers of one mode on them, the modes alternated at each N so that neighbours'
load falls on both. Results: bench/results/fanout_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import orjson

from bench.procs import GENERATOR_CORE, ChatServerProc, can_pin, tree_cpu_seconds
from bench.stack import Stack
from bench.wsclient import WSConn, open_ws

RESULTS = os.path.join(os.path.dirname(__file__), "results", "fanout_scale.json")


class Room:
    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.sent = 0


async def measure(stack: Stack, servers: list[ChatServerProc], pop: Any, rooms: int, members: int,
                  rate: float, seconds: float, warmup: float, idle_s: float = 3.0) -> dict[str, Any]:
    n = len(servers)
    delivered = [0] * n  # per process
    bad: list[str] = []
    conns: list[tuple[WSConn, int, str]] = []  # (conn, process index, room id)
    seen: dict[int, dict[str, int]] = {}
    counting = {"on": False}

    def on_text(conn: WSConn, payload: bytes | memoryview) -> None:
        frame = orjson.loads(bytes(payload))
        kind = frame.get("type")
        if kind not in ("message", "ack"):
            return
        msg = frame["message"]
        mine = seen[conn.index]
        last = mine.get(msg["room_id"])  # None: the first of this run (the rooms carry on from earlier runs)
        if last is not None and msg["seq"] != last + 1 and len(bad) < 10:
            bad.append(f"conn {conn.index} room {msg['room_id']}: seq {msg['seq']} after {last}")
        mine[msg["room_id"]] = msg["seq"]
        mine["#"] = mine.get("#", 0) + 1
        if counting["on"]:
            delivered[conn.index % n] += 1

    # connection index = position; index % n must be the process: lay them out so it is
    index = 0
    senders: list[WSConn] = []
    for r in range(rooms):
        proc = r % n
        for m in range(members):
            user = pop.room_members[r][m]
            # pick an index congruent to proc mod n
            while index % n != proc:
                index += 1
            seen[index] = {}
            conn = await open_ws(f"{servers[proc].ws_url}?token={pop.tokens[user]}", on_text, index)
            conns.append((conn, proc, pop.room_ids[r]))
            if m == 0:
                senders.append(conn)
            index += 1
    await asyncio.sleep(1.0)  # hellos in
    # idle baseline: what each process burns with its connections open and no traffic
    # (heartbeat, timers), so the per-message figure can be given with and without it
    idle0 = [tree_cpu_seconds(s.pid) for s in servers]
    t_idle = time.perf_counter()
    await asyncio.sleep(idle_s)
    idle_rate = [(tree_cpu_seconds(s.pid) - c) / (time.perf_counter() - t_idle) for s, c in zip(servers, idle0)]

    state = [Room(pop.room_ids[r]) for r in range(rooms)]
    stop = {"t": 0.0}

    async def send_loop() -> None:
        interval = 1.0 / rate
        start = time.perf_counter()
        k = 0
        while True:
            now = time.perf_counter()
            if now >= stop["t"]:
                return
            target = start + k * interval
            if target > now:
                await asyncio.sleep(target - now)
            r = k % rooms
            state[r].sent += 1
            senders[r].send_text(orjson.dumps({"type": "send", "room_id": state[r].room_id, "body": f"m{k}"}))
            k += 1

    stop["t"] = time.perf_counter() + warmup + seconds
    task = asyncio.create_task(send_loop())
    await asyncio.sleep(warmup)
    cpu0 = [tree_cpu_seconds(s.pid) for s in servers]
    redis0 = tree_cpu_seconds(stack.redis.pid)  # type: ignore[union-attr]
    counting["on"] = True
    t0 = time.perf_counter()
    await task
    await asyncio.sleep(0.5)  # the last deliveries
    counting["on"] = False
    elapsed = time.perf_counter() - t0
    cpu = [tree_cpu_seconds(s.pid) - c for s, c in zip(servers, cpu0)]
    redis_cpu = tree_cpu_seconds(stack.redis.pid) - redis0  # type: ignore[union-attr]
    await asyncio.sleep(1.0)
    # completeness: every connection got every message of its room
    missing = 0
    for conn, _proc, room_id in conns:
        total = next(s.sent for s in state if s.room_id == room_id)
        missing += total - seen[conn.index].get("#", 0)
    for conn, *_ in conns:
        conn.close()
    per_proc = [1e6 * c / d if d else None for c, d in zip(cpu, delivered)]
    net = [1e6 * (c - i * elapsed) / d if d else None for c, i, d in zip(cpu, idle_rate, delivered)]
    return {
        "processes": n, "elapsed_s": round(elapsed, 2), "sent": sum(s.sent for s in state),
        "delivered_per_process": delivered,
        "cpu_s_per_process": [round(c, 3) for c in cpu],
        "cpu_us_per_delivered_per_process": [round(x, 1) if x else None for x in per_proc],
        "cpu_us_per_delivered_all": round(1e6 * sum(cpu) / max(1, sum(delivered)), 1),
        "idle_cpu_per_s_per_process": [round(i, 4) for i in idle_rate],
        "net_cpu_us_per_delivered_per_process": [round(x, 1) if x else None for x in net],
        "net_cpu_us_per_delivered_all": round(1e6 * (sum(cpu) - sum(idle_rate) * elapsed) / max(1, sum(delivered)), 1),
        "redis_cpu_s": round(redis_cpu, 3),
        "missing": missing, "out_of_order": bad,
    }


async def run_all(opts: argparse.Namespace, run_id: str) -> list[dict[str, Any]]:
    """One Redis and database; for each step its own N servers in one mode, started and stopped
    around it. Steps alternate the modes at each N (global, rooms, rooms, global, ...), so a
    neighbour's load on the shared machine falls on both halves of each pair."""
    stack = Stack(run_id, "fanout", extra_env={"WS_HEARTBEAT_S": "60"})
    out = []
    servers: list[ChatServerProc] = []
    try:
        await stack.start()
        n_users = opts.rooms * opts.members
        groups = [list(range(r * opts.members, (r + 1) * opts.members)) for r in range(opts.rooms)]
        pop = await stack.populate(n_users, groups)
        if stack.server is not None:  # it made the rooms; each step starts servers of its own
            stack.server.stop()
            stack.server = None
        step = 0
        for n in opts.processes:
            for rep in range(opts.repeat):
                modes = opts.modes if rep % 2 == 0 else list(reversed(opts.modes))
                for mode in modes:
                    env = {**stack.env, "FANOUT_CHANNELS": mode}
                    servers = []
                    for i in range(n):
                        proc = ChatServerProc(env, stack.tag, name=f"s{step}-{mode}-{i}")
                        servers.append(proc)
                        await asyncio.get_running_loop().run_in_executor(None, proc.wait_ready)
                    step += 1
                    res = await measure(stack, servers, pop, opts.rooms, opts.members, opts.rate, opts.seconds,
                                        opts.warmup)
                    res["mode"], res["repeat"] = mode, rep
                    print(json.dumps(res), flush=True)
                    out.append(res)
                    for proc in servers:
                        proc.stop()
                    servers = []
    finally:
        for proc in servers:
            proc.stop()
        stack.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=24)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--rate", type=float, default=240.0, help="messages/s, all rooms together")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["global", "rooms"])
    p.add_argument("--repeat", type=int, default=2, help="pairs per process count (modes alternated)")
    opts = p.parse_args(argv)
    if can_pin():  # the generator on its own core, the servers and Redis on the other (bench/procs.py)
        os.sched_setaffinity(0, {GENERATOR_CORE})
    run_id = os.urandom(3).hex()
    results = asyncio.run(run_all(opts, run_id))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"options": vars(opts), "results": results}, f, indent=1)
    print(f"{'mode':7} {'N':>2} {'sent':>6} {'us/deliv per proc':>28} {'all':>6} {'net all':>7} {'redis s':>7} missing")
    for r in results:
        per = " ".join(f"{x:6.0f}" if x else "     -" for x in r["cpu_us_per_delivered_per_process"])
        print(f"{r['mode']:7} {r['processes']:>2} {r['sent']:>6} {per:>28} {r['cpu_us_per_delivered_all']:6.0f} "
              f"{r['net_cpu_us_per_delivered_all']:7.0f} {r['redis_cpu_s']:7.2f} {r['missing']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
