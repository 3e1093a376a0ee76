"""The load generator process: `python -m bench.generator <config.json>` (started by the bench).

Runs on its own core (taskset), with uvloop and the lean clients of `bench.wsclient`.
It speaks to the bench through JSON lines on stdout (`progress`, `step`, `result`,
`await`) and reads a `go` line on stdin when it waits for the bench (history scenario).
It measures the server itself (CPU seconds and RSS of its process tree, from /proc)
around each measurement window, and its own CPU and send lag, so that a saturated
generator is reported as such instead of being taken for the server's limit.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench import procs
from bench.load import Load, emit, sender_list, wait_stdin_go
from bench.stats import summarize
from bench.wsclient import HttpConn


def capacity(cfg: dict[str, Any]) -> int:
    """Upper bound of the number of messages the mode sends (sizes the bookkeeping arrays)."""
    per_step = float(cfg.get("warmup_s", 0)) + float(cfg.get("duration_s", 0))
    total = sum(int(r * per_step) + 2 for r in cfg.get("rates", []))
    if cfg["mode"] == "reads":
        total *= 2  # a plain and a marking step per rate
    if cfg["mode"] == "history":
        total += int(cfg["prefill"]) + 2
        total += 2 * (int(cfg["background_rate"] * float(cfg["phase_s"])) + 2)
    return total


def _connections_report(load: Load) -> dict[str, Any]:
    codes = Counter(str(c.close_code) for c in load.conns if c.closed)
    return {"connections": len(load.conns), "connect_failures": load.connect_failures,
            "connect_s": round(load.connect_s, 2), "closed_during_run": dict(codes),
            "unrecognised_frames": load.foreign}


class FlushSampler:
    """Rows in PostgreSQL's `messages`, sampled every `interval` s (the stack scenario).

    So a step can tell how many rows the worker flushed during its measured window, and
    the longest stretch of it in which no flush landed (flushes must run all along).
    """

    def __init__(self, db_url: str, interval: float = 0.25) -> None:
        self.db_url, self.interval = db_url, interval
        self.samples: list[tuple[float, int]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import asyncpg

        self.conn = await asyncpg.connect(self.db_url, timeout=10)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            n = await self.conn.fetchval("SELECT count(*) FROM messages")
            self.samples.append((time.perf_counter(), int(n)))
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.conn.close()

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Rows flushed between the last sample at or before t0 and the first at or after t1."""
        before = [s for s in self.samples if s[0] <= t0]
        after = [s for s in self.samples if s[0] >= t1]
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if not before or not after:
            return {"rows": None}
        a, b = before[-1], after[0]
        # Longest time between two flushes landing inside the window (from the samples).
        lands = [t for (t, n), (_, m) in zip([a, *inside], [*inside, b]) if n != m]
        points = [t0, *lands, t1]
        gap = max((y - x for x, y in zip(points, points[1:])), default=t1 - t0)
        return {"rows": b[1] - a[1], "rows_per_s": round((b[1] - a[1]) / max(1e-9, b[0] - a[0]), 1),
                "landed_samples": len(lands), "sample_interval_s": self.interval,
                "longest_gap_s": round(gap, 2)}


async def realtime(load: Load, cfg: dict[str, Any]) -> dict[str, Any]:
    sampler = FlushSampler(cfg["flush_db_url"]) if cfg.get("flush_db_url") else None
    if sampler is not None:
        await sampler.start()
    try:
        return await _realtime(load, cfg, sampler)
    finally:
        if sampler is not None:
            await sampler.stop()


async def _realtime(load: Load, cfg: dict[str, Any], sampler: FlushSampler | None) -> dict[str, Any]:
    specs = cfg["conns"]
    emit("progress", msg=f"connecting {len(specs)} WebSocket clients")
    conns = await load.connect_all(specs)
    load.set_fanout(conns, specs)
    senders = sender_list(conns, specs)
    if not senders:
        raise RuntimeError(f"no sender connected; connection failures: {load.connect_failures}")
    emit("progress", msg=f"{len(load.conns)} connected in {load.connect_s:.1f}s, {len(senders)} senders")
    if cfg.get("await_before_steps"):  # the bench starts its profiler now, past the connection setup
        emit("await", what="steps")
        await wait_stdin_go(float(cfg.get("await_timeout_s", 120)))
    steps: list[dict[str, Any]] = []
    best: float | None = None
    k0 = 0
    for i, rate in enumerate(cfg["rates"]):
        if cfg.get("await_each_step"):  # the bench changes something between steps (stack --stack-ab)
            emit("await", what="step", index=i)
            await wait_stdin_go(float(cfg.get("await_timeout_s", 120)))
        emit("progress", msg=f"rate {rate:g} msgs/s: {cfg['warmup_s']}s warm-up + {cfg['duration_s']}s measured")
        res = await load.run_step(rate, float(cfg["warmup_s"]), float(cfg["duration_s"]), k0, senders,
                                  float(cfg.get("drain_s", 5)))
        k0 += res["sent"]
        if sampler is not None:
            await asyncio.sleep(sampler.interval * 1.5)  # one sample past the window
            res["flush"] = sampler.window(res["t_start"], res["t_end"])
        steps.append(res)
        emit("step", step=res)
        if res["passed"]:
            best = rate
        else:
            if res["lost"] or res["unacked"]:
                # Past the limit "late" is not "lost": give the backlog time to arrive, then count again.
                final = await load.settle(res["k0"], res["sent"], float(cfg.get("final_drain_s", 30)))
                res["after_final_drain"] = {key: final[key] for key in ("lost", "unacked", "acked", "rejected")}
                emit("progress", msg=f"after a longer drain: lost {final['lost']}, unacked {final['unacked']}")
            if cfg.get("stop_on_fail", True):
                break
        await asyncio.sleep(float(cfg.get("pause_s", 0.5)))
    return {"mode": "realtime", "senders": len(senders), "rooms": len(load.rooms),
            "highest_passing_rate": best, "steps": steps, **_connections_report(load)}


async def reads(load: Load, cfg: dict[str, Any]) -> dict[str, Any]:
    """Per rate, the plain message load and then the same load with every recipient marking its
    room read after each message it receives: the marker load beside the message load, and
    what it costs the server per message, measured on the same connections and server."""
    specs = cfg["conns"]
    emit("progress", msg=f"connecting {len(specs)} WebSocket clients")
    conns = await load.connect_all(specs)
    load.set_fanout(conns, specs)
    senders = sender_list(conns, specs)
    if not senders:
        raise RuntimeError(f"no sender connected; connection failures: {load.connect_failures}")
    pairs: list[dict[str, Any]] = []
    k0 = 0
    for rate in cfg["rates"]:
        pair: dict[str, Any] = {"rate": rate}
        for kind in ("plain", "reads"):
            load.mark_reads = kind == "reads"
            emit("progress", msg=f"{kind} at {rate:g} msgs/s: {cfg['warmup_s']}s warm-up + {cfg['duration_s']}s")
            before = load.reads_sent, load.reads_received
            res = await load.run_step(rate, float(cfg["warmup_s"]), float(cfg["duration_s"]), k0, senders,
                                      float(cfg.get("drain_s", 5)))
            # The drain waited for the messages; give the last markers' events the same bound.
            deadline = time.perf_counter() + float(cfg.get("drain_s", 5))
            while load.reads_received - before[1] < load.reads_sent - before[0] and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            res["reads_sent_total"] = load.reads_sent - before[0]
            res["read_events_total"] = load.reads_received - before[1]
            k0 += res["sent"]
            pair[kind] = res
            emit("step", step=res)
            load.mark_reads = False
            await asyncio.sleep(float(cfg.get("pause_s", 0.5)))
        plain, marked = pair["plain"], pair["reads"]
        pair["server_cpu_ratio"] = round(marked["server_cpu_us_per_msg"] / max(1e-9, plain["server_cpu_us_per_msg"]), 2)
        pairs.append(pair)
    return {"mode": "reads", "senders": len(senders), "rooms": len(load.rooms), "pairs": pairs,
            **_connections_report(load)}


async def idle(load: Load, cfg: dict[str, Any]) -> dict[str, Any]:
    """Open the connections in two halves: RSS after each gives the total and the marginal cost."""
    pid = cfg["server_pid"]
    settle = float(cfg.get("settle_s", 2))
    base_rss = procs.tree_rss_bytes(pid)
    specs = cfg["conns"]
    half = len(specs) // 2
    emit("progress", msg=f"opening {len(specs)} idle connections (server RSS {base_rss / 2**20:.1f} MB)")
    await load.connect_all(specs[:half])
    n_half = len(load.conns)
    await asyncio.sleep(settle)
    mid_rss = procs.tree_rss_bytes(pid)
    await load.connect_all(specs[half:], offset=half)
    await asyncio.sleep(settle)
    rss = procs.tree_rss_bytes(pid)
    hold = float(cfg.get("hold_s", 5))
    cpu0, t0 = procs.tree_cpu_seconds(pid), time.perf_counter()
    emit("progress", msg=f"{len(load.conns)} connected in {load.connect_s:.1f}s; holding {hold:g}s")
    await asyncio.sleep(hold)
    idle_cpu = (procs.tree_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
    rss_end = procs.tree_rss_bytes(pid)
    n = max(1, len(load.conns))
    n_second = max(1, len(load.conns) - n_half)
    return {"mode": "idle", "requested": len(specs), "server_rss_before_mb": round(base_rss / 2**20, 1),
            "server_rss_half_mb": round(mid_rss / 2**20, 1),
            "server_rss_after_mb": round(rss / 2**20, 1), "server_rss_end_mb": round(rss_end / 2**20, 1),
            "rss_per_connection_kb": round((rss - base_rss) / n / 1024, 2),
            "rss_per_connection_marginal_kb": round((rss - mid_rss) / n_second / 1024, 2),
            "connects_per_s": round(len(load.conns) / max(load.connect_s, 1e-9), 1),
            "idle_server_cpu_share": round(idle_cpu, 4),
            "still_open": sum(1 for c in load.conns if not c.closed), **_connections_report(load)}


async def _read_phase(cfg: dict[str, Any], path: str, seconds: float, check: Any) -> dict[str, Any]:
    """Closed loop: `readers` keep-alive connections each GET `path` back to back for `seconds`."""
    parts = urlsplit(cfg["http_url"])
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def reader() -> None:
        conn = HttpConn(parts.hostname or "127.0.0.1", parts.port or 80, cfg["reader_token"])
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    status, body = await conn.get(path)
                except Exception as exc:  # noqa: BLE001 - counted
                    errors[type(exc).__name__] += 1
                    conn.close()
                    continue
                latencies.append(int((time.perf_counter() - t) * 1e6))
                problem = f"http_{status}" if status != 200 else check(orjson.loads(body))
                if problem:
                    errors[problem] += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(int(cfg.get("readers", 8)))))
    wall = time.perf_counter() - t0
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / wall, 1),
            "latency_ms": summarize(latencies, 1e-3), "errors": dict(errors)}


def _page_check(limit: int, last_at_least: int | None = None, last_exact: int | None = None) -> Any:
    def check(page: dict[str, Any]) -> str | None:
        seqs = [m["seq"] for m in page.get("items", [])]
        if len(seqs) != limit:
            return "short_page"
        if any(b != a + 1 for a, b in zip(seqs, seqs[1:])):
            return "gap_or_disorder"
        if last_exact is not None and seqs[-1] != last_exact:
            return "wrong_page"
        if last_at_least is not None and seqs[-1] < last_at_least:
            return "stale_page"
        return None
    return check


async def history(load: Load, cfg: dict[str, Any]) -> dict[str, Any]:
    specs = cfg["conns"]
    hist = int(cfg["history_room"])
    room_id = load.rooms[hist]
    conns = await load.connect_all(specs)
    load.set_fanout(conns, specs)
    drain = float(cfg.get("drain_s", 5))
    prefill_senders = sender_list(conns, specs, only_rooms={hist})
    bg_senders = sender_list(conns, specs, only_rooms=set(range(len(load.rooms))) - {hist})
    n, rate = int(cfg["prefill"]), float(cfg["prefill_rate"])
    emit("progress", msg=f"prefilling the history room with {n} messages at {rate:g}/s")
    prefill = await load.run_step(rate, 0, n / rate, 0, prefill_senders, drain)
    k0 = prefill["sent"]
    if prefill["acked"] != prefill["sent"]:
        raise RuntimeError(f"prefill incomplete: {prefill['acked']}/{prefill['sent']} acked")
    emit("await", what="flush")
    await wait_stdin_go(float(cfg.get("await_timeout_s", 900)))
    limit, deep = int(cfg.get("page_limit", 50)), int(cfg["deep_before"])
    base = f"/rooms/{room_id}/messages"
    phases: dict[str, Any] = {}
    for kind, path, check in (
        ("newest", f"{base}?limit={limit}", _page_check(limit, last_at_least=n)),
        ("deep", f"{base}?before={deep}&limit={limit}", _page_check(limit, last_exact=deep - 1)),
    ):
        seconds = float(cfg["phase_s"])
        emit("progress", msg=f"{kind}-page reads for {seconds:g}s with {cfg['background_rate']:g} msgs/s of sends")
        bg_task = asyncio.ensure_future(load.run_step(float(cfg["background_rate"]), 0, seconds, k0,
                                                       bg_senders, drain))
        try:
            reads = await _read_phase(cfg, path, seconds, check)
        finally:
            bg = await bg_task
        k0 += bg["sent"]
        phases[kind] = {**reads, "background_sends": {key: bg[key] for key in (
            "rate", "acked", "lost", "duplicates", "delivery_ms", "server_cpu_share", "generator_cpu_share",
            "generator_saturated")}}
        emit("step", step={"kind": kind, **phases[kind]})
    return {"mode": "history", "prefill": {key: prefill[key] for key in ("sent", "acked", "lost", "duplicates")},
            "phases": phases, **_connections_report(load)}


async def main_async(cfg: dict[str, Any]) -> dict[str, Any]:
    from bench import storm

    modes = {"realtime": realtime, "idle": idle, "history": history, "reads": reads,
             "storm": lambda _load, c: storm.run(c)}
    cfg.setdefault("capacity", capacity(cfg))
    load = Load(cfg)
    try:
        result = await modes[cfg["mode"]](load, cfg)
        result["generator_loop"] = type(asyncio.get_running_loop()).__module__
        return result
    finally:
        for conn in load.conns:
            conn.close()
        await asyncio.sleep(0.2)


def main() -> int:
    cfg = orjson.loads(Path(sys.argv[1]).read_bytes())
    procs.raise_fd_limit()
    try:
        import uvloop

        run_loop = uvloop.run
    except ImportError:  # still works; the result names the loop that ran
        run_loop = asyncio.run
    result = run_loop(main_async(cfg))
    result["generator_cores"] = sorted(os.sched_getaffinity(0))
    emit("result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
