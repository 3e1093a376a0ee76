"""The worker's cost per room run in a `bench stack` run: `python -m bench.stackwatch [options] -- <bench args>`

(docs/performance.md, "The worker never hurts live latency (item 2)".) Starts
`python -m bench <bench args>` (e.g. `stack --rate 1000 --warmup 3 --duration 14`), finds the
launcher's Dramatiq processes and the scenario's private Redis among its descendants, waits
until the load runs (the Redis XADD count climbing) plus `--settle` seconds, then measures one
`--window` of:
- worker CPU: utime + stime of the `dramatiq` processes (parent and worker), /proc/<pid>/stat;
- messages accepted (XADD), jobs enqueued (RPUSH: Dramatiq's enqueue; nothing else of ours
  pushes to a list), room runs (the flush lease's SET..NX PX plus the release's two DELs and
  the lease's one: DEL / 3 for runs that took their lease), from the private Redis's
  INFO commandstats (commands inside scripts are counted too);
- the server tree's CPU and core 0's busy time, for context.
Prints one JSON line, then the bench's own output goes on as usual. Bounded: gives up after
`--timeout` seconds and always waits for (or, on timeout, terminates) the bench it started.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import redis as redis_sync

from bench.procs import core_busy_seconds, cpu_seconds, tree_pids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _find(root: int) -> tuple[list[int], list[int], int | None]:
    """(dramatiq pids, launcher-tree pids, private Redis port) under `root`."""
    workers, tree, port = [], [], None
    for pid in tree_pids(root):
        argv = _cmdline(pid)
        if not argv:
            continue
        if "redis-server" in argv[0]:
            # Redis rewrites its title to "redis-server 127.0.0.1:<port>"
            if "--port" in argv:
                port = int(argv[argv.index("--port") + 1])
            elif ":" in argv[0]:
                port = int(argv[0].rsplit(":", 1)[1].split()[0])
        elif "dramatiq" in argv:
            workers.append(pid)
        if "app.ops.launcher" in argv and "--die-with-parent" in argv:
            tree = tree_pids(pid)  # server (and its Sanic workers), worker, scheduler, watchdog
    return workers, tree, port


def _stats(client: redis_sync.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after the load starts")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("bench", nargs=argparse.REMAINDER)
    opts = p.parse_args(argv)
    args = opts.bench[1:] if opts.bench[:1] == ["--"] else opts.bench
    bench = subprocess.Popen([sys.executable, "-m", "bench", *args])
    deadline = time.monotonic() + opts.timeout
    try:
        client, last = None, 0
        while time.monotonic() < deadline and bench.poll() is None:
            workers, _, port = _find(bench.pid)
            if port and workers:
                client = client or redis_sync.Redis(port=port, socket_timeout=5)
                xadd = _stats(client).get("xadd", 0)
                if last and xadd - last > 200:  # in 0.5 s: the load runs
                    break
                last = xadd
            time.sleep(0.5)
        else:
            print(json.dumps({"stackwatch": "no load seen"}), flush=True)
            return 1
        time.sleep(opts.settle)
        workers, tree, _ = _find(bench.pid)
        s0, w0, t0, c0 = _stats(client), cpu_seconds(workers), cpu_seconds(tree), core_busy_seconds(0)
        m0 = time.monotonic()
        time.sleep(opts.window)
        s1, w1, t1, c1 = _stats(client), cpu_seconds(workers), cpu_seconds(tree), core_busy_seconds(0)
        secs = time.monotonic() - m0
        d = {k: s1.get(k, 0) - s0.get(k, 0) for k in ("xadd", "rpush", "del", "set", "xlen", "evalsha")}
        runs = d["del"] / 3
        out = {"stackwatch": {"window_s": round(secs, 2), "worker_cpu_s": round(w1 - w0, 3),
                              "tree_cpu_s": round(t1 - t0, 3), "core0_busy_s": round(c1 - c0, 3),
                              "messages": d["xadd"], "jobs": d["rpush"], "room_runs": round(runs),
                              "commits": d["xlen"],
                              "worker_ms_per_room_run": round(1000 * (w1 - w0) / runs, 2) if runs else None,
                              "worker_ms_per_job": round(1000 * (w1 - w0) / d["rpush"], 2) if d["rpush"] else None,
                              "worker_us_per_message": round(1e6 * (w1 - w0) / d["xadd"], 1) if d["xadd"] else None,
                              "redis_commands": d}}
        print(json.dumps(out), flush=True)
        bench.wait(max(1.0, deadline - time.monotonic()))
        return bench.returncode or 0
    finally:
        if bench.poll() is None:
            bench.terminate()
            try:
                bench.wait(60)
            except subprocess.TimeoutExpired:
                bench.kill()


if __name__ == "__main__":
    raise SystemExit(main())
