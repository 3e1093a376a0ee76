"""The scenarios: each starts its own stack, drives it, returns a JSON-able result, cleans up."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bench import procs
from bench.profile import Profiler
from bench.profile import summarize as summarize_profile
from bench.runner import run_generator, say
from bench.stack import Population, Stack

# The flush and history scenarios drive the project's services in a child process
# (pinned to the generator's core) or in the bench process: these need the app code.
FLUSH_TIMEOUT_S = 1800


def _groups(n_users: int, n_rooms: int) -> list[list[int]]:
    """Users 0..n-1 split into n_rooms consecutive groups (sizes differ by at most one)."""
    n_rooms = max(1, min(n_rooms, n_users))
    base, extra = divmod(n_users, n_rooms)
    out, start = [], 0
    for r in range(n_rooms):
        size = base + (1 if r < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def _conn_specs(pop: Population, groups: list[list[int]], share: float, room_offset: int = 0) -> list[dict[str, Any]]:
    """One connection per user; the first round(size*share) members of each room send."""
    specs = []
    for r, group in enumerate(groups):
        n_send = max(1, round(len(group) * share)) if share > 0 else 0
        for pos, user in enumerate(group):
            specs.append({"token": pop.tokens[user], "rooms": [r + room_offset], "sender": pos < n_send})
    return specs


def _common(opts: argparse.Namespace) -> dict[str, Any]:
    return {"warmup_s": opts.warmup, "duration_s": opts.duration, "drain_s": opts.drain,
            "body_bytes": opts.body_bytes, "p99_bound_ms": opts.p99_ms,
            "connect_concurrency": opts.connect_concurrency}


async def realtime(opts: argparse.Namespace, run_id: str, mode: str = "cache") -> dict[str, Any]:
    name = "realtime" if mode == "cache" else "direct"
    rates = opts.rates if mode == "cache" else opts.direct_rates
    stack = Stack(run_id, name, write_mode=mode)
    try:
        say(f"[{name}] starting Redis, database and server (CHAT_WRITE_MODE={mode})")
        await stack.start()
        groups = _groups(opts.connections, opts.rooms)
        say(f"[{name}] creating {opts.connections} users and {len(groups)} rooms")
        pop = await stack.populate(opts.connections, groups)
        cfg = {"mode": "realtime", "ws_url": stack.server.ws_url, "rooms": pop.room_ids,  # type: ignore[union-attr]
               "conns": _conn_specs(pop, groups, opts.senders_share), "rates": rates,
               "stop_on_fail": not opts.no_stop, **_common(opts)}
        per_step = opts.warmup + opts.duration + opts.drain + 5
        profiler: Profiler | None = None

        async def start_profile(_event: dict[str, Any]) -> None:
            nonlocal profiler
            say(f"[{name}] profiling the server with py-spy")
            profiler = Profiler(stack.server.pid, opts.out, stack.tag, name)  # type: ignore[union-attr]

        if opts.profile:
            cfg["await_before_steps"] = True
        try:
            res = await run_generator(stack, cfg, name, timeout_s=len(rates) * per_step + 300,
                                      on_await=start_profile if opts.profile else None)
        finally:
            raw = profiler.stop() if profiler is not None else None
        res.update({"scenario": name, "write_mode": mode, "room_size": len(groups[0]),
                    "senders_share": opts.senders_share})
        if raw is not None:
            res["profile"] = summarize_profile(raw)
        return res
    finally:
        stack.close()


def stack_flush_threshold(opts: argparse.Namespace) -> int:
    """FLUSH_BACKLOG_THRESHOLD for the stack scenario: each room's backlog triggers a flush about
    every --stack-flush-every-s seconds at 1,000 msgs/s (the cron's minute is far too rare to
    land a flush inside a few seconds of measurement)."""
    if opts.stack_flush_threshold:
        return opts.stack_flush_threshold
    per_room_per_s = 1000.0 / max(1, min(opts.rooms, opts.connections))
    return max(1, round(per_room_per_s * opts.stack_flush_every_s))


def renice_workers(launcher_pid: int, nice: int) -> int:
    """Every thread of the worker's and scheduler's processes (in our launcher's tree) to `nice`.

    Only processes this bench started; going back down to 0 needs CAP_SYS_NICE (root here),
    else OSError says so."""
    import os
    from pathlib import Path

    count = 0
    for pid in procs.tree_pids(launcher_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        if b"dramatiq" in cmd or b"tasks.scheduler" in cmd:
            for tid in tids:
                try:
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                    count += 1
                except ProcessLookupError:
                    pass
    return count


def ab_summary(steps: list[dict[str, Any]], ab: list[int]) -> list[dict[str, Any]]:
    """Per rate and niceness: the median p50/p99 over the steps, and the pairs' p99 ratios."""
    import statistics

    out = []
    for rate in sorted({s["rate"] for s in steps}):
        row: dict[str, Any] = {"rate": rate}
        for nice in ab:
            mine = [s for s in steps if s["rate"] == rate and s.get("worker_nice") == nice]
            p50s = [s["delivery_ms"]["p50"] for s in mine if s["delivery_ms"]["p50"] is not None]
            p99s = [s["delivery_ms"]["p99"] for s in mine if s["delivery_ms"]["p99"] is not None]
            row[f"nice_{nice}"] = {
                "steps": len(mine), "p50_ms": p50s, "p99_ms": p99s,
                "median_p50_ms": round(statistics.median(p50s), 3) if p50s else None,
                "median_p99_ms": round(statistics.median(p99s), 3) if p99s else None,
                "others_on_core": [s.get("server_core_foreign_share") for s in mine],
                "tree_us_per_msg": [s["server_cpu_us_per_msg"] for s in mine]}
        out.append(row)
    return out


async def stack_scenario(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """The realtime load against `make run`'s whole process tree (server, worker, scheduler) and its
    Redis on the server core, the worker flushing every few seconds meanwhile."""
    name = "stack"
    threshold = stack_flush_threshold(opts)
    env = {"FLUSH_BACKLOG_THRESHOLD": str(threshold), **dict(kv.split("=", 1) for kv in opts.stack_env)}
    stack = Stack(run_id, name, launcher=True, extra_env=env)
    try:
        say(f"[{name}] starting Redis, database and app.ops.launcher (server + worker + scheduler), "
            f"FLUSH_BACKLOG_THRESHOLD={threshold}" + (f", {' '.join(opts.stack_env)}" if opts.stack_env else ""))
        await stack.start()
        groups = _groups(opts.connections, opts.rooms)
        say(f"[{name}] creating {opts.connections} users and {len(groups)} rooms")
        pop = await stack.populate(opts.connections, groups)
        rates = opts.stack_rates
        cfg = {"mode": "realtime", "ws_url": stack.server.ws_url, "rooms": pop.room_ids,  # type: ignore[union-attr]
               "conns": _conn_specs(pop, groups, opts.senders_share), "rates": rates,
               "stop_on_fail": not opts.no_stop, "flush_db_url": stack.db_url, **_common(opts)}
        on_await = None
        ab: list[int] = []
        if opts.stack_ab:
            # A paired before/after inside one run: the worker's and scheduler's niceness flips
            # between consecutive steps (A, B, A, B, ...), so the neighbours' load on this shared
            # machine falls on both halves alike instead of on whichever run came second.
            ab = [int(x) for x in opts.stack_ab.split(",")]
            rates = cfg["rates"] = [r for r in rates for _ in range(2 * opts.stack_ab_rounds)]
            cfg["stop_on_fail"], cfg["await_each_step"] = False, True

            async def on_await(event: dict[str, Any]) -> None:
                nice = ab[event["index"] % len(ab)]
                n = renice_workers(stack.server.pid, nice)  # type: ignore[union-attr]
                say(f"[{name}] step {event['index'] + 1}: worker and scheduler at nice {nice} ({n} threads)")
        per_step = opts.warmup + opts.duration + opts.drain + 5
        res = await run_generator(stack, cfg, name, timeout_s=len(rates) * per_step + 300, on_await=on_await)
        if ab:
            for i, step in enumerate(res["steps"]):
                step["worker_nice"] = ab[i % len(ab)]
            res["ab"] = ab_summary(res["steps"], ab)
        res.update({"scenario": name, "write_mode": "cache", "room_size": len(groups[0]),
                    "senders_share": opts.senders_share, "flush_backlog_threshold": threshold,
                    "processes": "app.ops.launcher: server, worker, scheduler", "extra_env": env})
        return res
    finally:
        stack.close()


async def direct(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    return await realtime(opts, run_id, mode="direct")


async def flush(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    stack = Stack(run_id, "flush")
    try:
        say("[flush] starting Redis, database and server")
        await stack.start()
        groups = _groups(opts.flush_rooms * 2, opts.flush_rooms)  # two members per room send
        pop = await stack.populate(len(groups) * 2, groups)
        cfg = {"env": stack.env, "rooms": pop.room_ids,
               "senders": [[pop.user_ids[u] for u in g] for g in groups],
               "messages": opts.flush_messages, "body_bytes": opts.body_bytes,
               "concurrency": opts.flush_concurrency, "inject_tasks": 64,
               "copy_rows": opts.copy_ceiling_rows, "workdir": str(stack.workdir)}
        res = await _run_flush_child(stack, cfg)
        res["scenario"] = "flush"
        return res
    finally:
        stack.close()


async def _run_flush_child(stack: Stack, cfg: dict[str, Any]) -> dict[str, Any]:
    """`python -m bench.flushrun` pinned to the generator core; one JSON result line."""
    import asyncio
    import subprocess

    path = stack.workdir / "flush.json"
    path.write_text(json.dumps(cfg))
    proc = procs.Proc("flushrun", [sys.executable, "-m", "bench.flushrun", str(path)],
                      core=procs.GENERATOR_CORE, stdout=subprocess.PIPE, run_id=stack.tag)
    try:
        loop = asyncio.get_running_loop()
        out = await asyncio.wait_for(loop.run_in_executor(None, _relay, proc), FLUSH_TIMEOUT_S)
    finally:
        proc.stop()
    if proc.popen.returncode != 0 or out is None:
        raise RuntimeError(f"flush run failed (exit {proc.popen.returncode}):\n{proc.log_tail()}")
    return out


def _relay(proc: procs.Proc) -> dict[str, Any] | None:
    """Print the child's progress lines; return its result."""
    result = None
    assert proc.popen.stdout is not None
    for raw in proc.popen.stdout:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if event.get("event") == "progress":
            say(event["msg"])
        elif event.get("event") == "result":
            result = event["result"]
    proc.popen.wait(30)
    return result


async def history(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    stack = Stack(run_id, "history")
    try:
        say("[history] starting Redis, database and server")
        await stack.start()
        bg_groups = _groups(opts.history_bg_connections, max(1, opts.history_bg_connections // 10))
        n_bg = opts.history_bg_connections
        hist_group = list(range(n_bg, n_bg + 10))
        groups = bg_groups + [hist_group]
        pop = await stack.populate(n_bg + 10, groups)
        specs = _conn_specs(pop, groups, opts.senders_share)
        hist_index = len(groups) - 1
        cfg = {"mode": "history", "ws_url": stack.server.ws_url,  # type: ignore[union-attr]
               "http_url": stack.server.base_url, "rooms": pop.room_ids, "conns": specs,  # type: ignore[union-attr]
               "history_room": hist_index, "reader_token": pop.tokens[hist_group[0]],
               "prefill": opts.history_messages, "prefill_rate": opts.history_prefill_rate,
               "background_rate": opts.history_rate, "phase_s": opts.history_seconds,
               "readers": opts.history_readers, "page_limit": 50,
               # the deep page must lie inside the room's history, below the cached tail
               "deep_before": max(51, min(opts.history_deep_before, opts.history_messages // 2)),
               **_common(opts)}

        async def flush_history(_event: dict[str, Any]) -> None:
            say("[history] flushing the prefilled room to PostgreSQL (the worker's flush service)")
            await _flush_all(stack)

        prefill_s = opts.history_messages / opts.history_prefill_rate
        res = await run_generator(stack, cfg, "history", on_await=flush_history,
                                  timeout_s=prefill_s + 4 * opts.history_seconds + 600)
        res["scenario"] = "history"
        return res
    finally:
        stack.close()


async def _flush_all(stack: Stack) -> None:
    """Move every pending room into PostgreSQL with app.flush (as the worker would)."""
    import asyncpg
    from redis.asyncio import Redis

    from app.flush import flush_all_pending
    from app.store.keys import Keys

    assert stack.settings is not None and stack.redis is not None
    redis = Redis.from_url(stack.redis.url, decode_responses=True)
    pool = await asyncpg.create_pool(stack.db_url, min_size=1, max_size=4)
    try:
        await flush_all_pending(redis=redis, keys=Keys(stack.settings.redis_prefix), settings=stack.settings,
                                pool=pool, concurrency=4)
    finally:
        await pool.close()
        await redis.aclose()


async def idle(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    limit = procs.raise_fd_limit()
    n = opts.idle_connections
    if n + 1000 > limit:
        n = max(100, limit - 1000)
        say(f"[idle] file descriptor limit {limit}: holding {n} connections instead of {opts.idle_connections}")
    stack = Stack(run_id, "idle")
    try:
        say("[idle] starting Redis, database and server")
        await stack.start()
        groups = _groups(n, max(1, n // 10))
        say(f"[idle] creating {n} users and {len(groups)} rooms")
        pop = await stack.populate(n, groups)
        cfg = {"mode": "idle", "ws_url": stack.server.ws_url, "rooms": pop.room_ids,  # type: ignore[union-attr]
               "conns": _conn_specs(pop, groups, 0.0), "hold_s": opts.idle_hold, "settle_s": 2,
               "connect_concurrency": opts.connect_concurrency}
        res = await run_generator(stack, cfg, "idle", timeout_s=n / 50 + opts.idle_hold + 300)
        res.update({"scenario": "idle", "fd_limit": limit})
        return res
    finally:
        stack.close()


class BareStack:
    """The bare broadcast server (bench/bare.py) alone, pinned where the chat server would be."""

    def __init__(self, run_id: str) -> None:
        self.tag = f"{run_id}_bare"
        self.workdir = procs.ROOT / "var" / "bench" / self.tag
        self.redis = None
        self.db_name = None
        self.server: procs.Proc | None = None
        self.ws_url = ""

    async def start(self) -> "BareStack":
        import asyncio

        self.workdir.mkdir(parents=True, exist_ok=True)
        port = procs.free_port()
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.server = procs.Proc("bare", [sys.executable, "-m", "bench.bare", str(port)],
                                 core=procs.SERVER_CORE, run_id=self.tag)
        for _ in range(200):  # bounded: 20 s
            if not self.server.alive():
                raise RuntimeError(f"bare server exited:\n{self.server.log_tail()}")
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return self
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError("bare server did not listen within 20 s")

    def close(self) -> None:
        import shutil

        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


async def bare(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """The realtime load against the bare broadcast server: the yardstick and the generator's ceiling."""
    stack = BareStack(run_id)
    try:
        say("[bare] starting the bare in-memory broadcast server (bench/bare.py)")
        await stack.start()
        groups = _groups(opts.connections, opts.rooms)
        room_ids = [f"bare-room-{r}" for r in range(len(groups))]
        pop = Population(user_ids=[str(u) for u in range(opts.connections)],
                         tokens=[f"{room_ids[r]}:{u}" for r, g in enumerate(groups) for u in g])
        cfg = {"mode": "realtime", "ws_url": stack.ws_url, "rooms": room_ids,
               "conns": _conn_specs(pop, groups, opts.senders_share), "rates": opts.rates,
               "stop_on_fail": not opts.no_stop, **_common(opts)}
        per_step = opts.warmup + opts.duration + opts.drain + 5
        res = await run_generator(stack, cfg, "bare", timeout_s=len(opts.rates) * per_step + 300)  # type: ignore[arg-type]
        res.update({"scenario": "bare", "write_mode": "bare", "room_size": len(groups[0]),
                    "senders_share": opts.senders_share})
        return res
    finally:
        stack.close()


async def storm(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """Reconnect storm (bench/storm.py): the bare server's first connect, then the chat server's
    first connect, everyone closed at once, messages sent meanwhile, everyone back at once with `sync`."""
    limit = procs.raise_fd_limit()
    n = opts.storm_connections
    if n + 1000 > limit:
        n = max(100, limit - 1000)
        say(f"[storm] file descriptor limit {limit}: {n} clients instead of {opts.storm_connections}")
    groups = _groups(n, max(1, n // opts.storm_room_size))
    common = {"mode": "storm", "concurrency": opts.storm_concurrency, "storm_timeout_s": opts.storm_timeout,
              "missed_per_room": opts.storm_missed, "settle_s": 2}
    per_conn_s = 1 / 50  # generous bound of a slow first connect
    bare_stack = BareStack(run_id)
    try:
        say(f"[storm] the bare server's first connect of {n} clients (the yardstick)")
        await bare_stack.start()
        room_ids = [f"bare-room-{r}" for r in range(len(groups))]
        specs = [{"token": f"{room_ids[r]}:{u}", "rooms": [r]} for r, g in enumerate(groups) for u in g]
        bare_res = await run_generator(bare_stack, {**common, "bare": True, "ws_url": bare_stack.ws_url,  # type: ignore[arg-type]
                                                    "rooms": room_ids, "conns": specs},
                                       "storm-bare", timeout_s=n * per_conn_s + 300)
    finally:
        bare_stack.close()
    stack = Stack(run_id, "storm")
    try:
        say("[storm] starting Redis, database and server")
        await stack.start()
        say(f"[storm] creating {n} users and {len(groups)} rooms")
        pop = await stack.populate(n, groups)
        cfg = {**common, "ws_url": stack.server.ws_url, "http_url": stack.server.base_url,  # type: ignore[union-attr]
               "rooms": pop.room_ids, "conns": _conn_specs(pop, groups, 0.0),
               "owner_tokens": [pop.tokens[g[0]] for g in groups]}
        res = await run_generator(stack, cfg, "storm", timeout_s=2 * n * per_conn_s + opts.storm_timeout + 300)
    finally:
        stack.close()
    return {"scenario": "storm", "clients": n, "rooms": len(groups), "room_size": len(groups[0]),
            "concurrency": opts.storm_concurrency, "missed_per_room": opts.storm_missed, "fd_limit": limit,
            "bare": bare_res, "server": res}


SCENARIOS = {"realtime": realtime, "direct": direct, "flush": flush, "history": history, "idle": idle,
             "bare": bare, "stack": stack_scenario, "storm": storm}

# The message-lifecycle scenarios (issue 12) live in their own module; it imports this one lazily.
from bench import lifecycle as _lifecycle  # noqa: E402

SCENARIOS.update(_lifecycle.SCENARIOS)
