"""`python -m bench [realtime|direct|flush|history|idle|bare|stack|storm|reads|lifecycle_micro|search|all|report] [options]`
(`make bench` runs `all`; `make bench-lifecycle` the lifecycle scenarios of issue 12, bench/lifecycle.py).

Every scenario starts its own Redis, database and server (`stack`: `make run`'s whole tree),
measures, and removes them again; results go to bench/results/<scenario>.json and
bench/results/summary.md. `all` runs the bare yardstick, stack and storm first (issue 14's
ratios need them from the same run), then the others; docs/performance.md gives its duration
and the options that size it down (--storm-connections, --flush-messages, --copy-ceiling-rows,
--idle-connections, --rates, --stack-rates)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import lifecycle, procs, report
from bench.runner import say
from bench.scenarios import SCENARIOS


def _floats(raw: str) -> list[float]:
    return [float(x) for x in raw.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("scenario", nargs="?", default="all", choices=[*SCENARIOS, "all", "report"],
                   help="what to run; 'report' only rebuilds summary.md from the saved results")
    g = p.add_argument_group("realtime and direct")
    g.add_argument("--connections", type=int, default=1000, help="WebSocket connections (one user each)")
    g.add_argument("--rooms", type=int, default=100, help="rooms the connections are spread over")
    g.add_argument("--senders-share", type=float, default=0.2, help="share of each room's members that send")
    g.add_argument("--rates", type=_floats, default=_floats("1000,2000,3000,5000,7500,10000,15000,20000"),
                   help="aggregate send rates (msgs/s) tried in turn, cache mode")
    g.add_argument("--direct-rates", type=_floats, default=_floats("250,500,1000,1500,2000,3000,5000,7500,10000"),
                   help="rates tried against CHAT_WRITE_MODE=direct")
    g.add_argument("--rate", type=float, default=None, help="run this single rate (both modes)")
    g.add_argument("--duration", type=float, default=4.0, help="measured seconds per rate")
    g.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per rate (not measured)")
    g.add_argument("--drain", type=float, default=3.0, help="max seconds to wait for late acks/deliveries")
    g.add_argument("--p99-ms", type=float, default=100.0, help="latency bound of a passing rate")
    g.add_argument("--body-bytes", type=int, default=100, help="message body size")
    g.add_argument("--no-stop", action="store_true", help="keep stepping after a failing rate")
    g.add_argument("--connect-concurrency", type=int, default=100, help="handshakes in flight")
    g.add_argument("--profile", action="store_true",
                   help="sample the server with py-spy during the steps (needs py-spy; best with --rate)")
    g = p.add_argument_group("stack (make run's whole process tree: server, worker, scheduler)")
    g.add_argument("--stack-rates", type=_floats, default=_floats("1000,1500,2000"),
                   help="rates tried against the whole stack (--rate overrides)")
    g.add_argument("--stack-flush-every-s", type=float, default=3.0,
                   help="each room's backlog triggers a flush about this often at 1,000 msgs/s")
    g.add_argument("--stack-flush-threshold", type=int, default=0,
                   help="FLUSH_BACKLOG_THRESHOLD given directly (0: from --stack-flush-every-s)")
    g.add_argument("--stack-ab", default="", metavar="NICE_A,NICE_B",
                   help="paired before/after in one run: each rate is run 2*--stack-ab-rounds times, the "
                        "worker's and scheduler's niceness flipping between A and B from step to step")
    g.add_argument("--stack-ab-rounds", type=int, default=3, help="A/B pairs per rate with --stack-ab")
    g.add_argument("--stack-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the stack (e.g. WORKER_NICE=0 for a before/after pair)")
    g = p.add_argument_group("storm (reconnect storm; the bare server's connect rate measured the same way)")
    g.add_argument("--storm-connections", type=int, default=10_000, help="clients (one user each)")
    g.add_argument("--storm-room-size", type=int, default=10, help="clients per room")
    g.add_argument("--storm-concurrency", type=int, default=500,
                   help="handshakes in flight at once (first connect and storm alike, bare server too)")
    g.add_argument("--storm-missed", type=int, default=2, help="messages sent to each room during the outage")
    g.add_argument("--storm-timeout", type=float, default=120.0, help="bound of the storm, seconds")
    g = p.add_argument_group("flush")
    g.add_argument("--flush-messages", type=int, default=200_000,
                   help="cached messages to flush (the issue's figure uses 1,000,000)")
    g.add_argument("--flush-rooms", type=int, default=100)
    g.add_argument("--flush-concurrency", type=int, default=4, help="rooms flushed at once")
    g.add_argument("--copy-ceiling-rows", type=int, default=1_000_000,
                   help="rows of the one COPY the flush is compared with (0: skip)")
    g = p.add_argument_group("history")
    g.add_argument("--history-messages", type=int, default=10_000, help="messages in the read room")
    g.add_argument("--history-prefill-rate", type=float, default=5000)
    g.add_argument("--history-rate", type=float, default=1000, help="background sends while reading")
    g.add_argument("--history-seconds", type=float, default=4.0, help="seconds per page kind")
    g.add_argument("--history-readers", type=int, default=8, help="concurrent keep-alive readers")
    g.add_argument("--history-deep-before", type=int, default=1000, help="`before` seq of the deep page")
    g.add_argument("--history-bg-connections", type=int, default=200)
    g = p.add_argument_group("idle")
    g.add_argument("--idle-connections", type=int, default=10_000)
    g.add_argument("--idle-hold", type=float, default=3.0, help="seconds the connections are held")
    lifecycle.add_arguments(p)
    p.add_argument("--redis-appendfsync", choices=["always", "everysec", "no"], default="everysec",
                   help="AOF fsync policy of the bench's private Redis")
    p.add_argument("--out", type=Path, default=report.RESULTS, help="directory of the results and summary.md")
    return p


async def run(opts: argparse.Namespace, names: list[str], run_id: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        t = time.monotonic()
        say(f"=== {name} ===")
        try:
            results[name] = await SCENARIOS[name](opts, run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - report it, go on with the next scenario
            say(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            results[name] = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"}
        say(f"[{name}] done in {time.monotonic() - t:.0f}s")
    return results


async def ensure_postgres() -> Any:
    """None when PostgreSQL answers; else (no URL given) an embedded server we start and stop."""
    import asyncpg

    from bench.stack import base_db_url, db_url_for

    url = base_db_url()
    try:
        conn = await asyncpg.connect(db_url_for(url, "postgres"), timeout=5)
        await conn.close()
        return None
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        if os.environ.get("BENCH_DATABASE_URL"):
            raise RuntimeError(f"PostgreSQL at BENCH_DATABASE_URL is not reachable: {exc}") from None
        reason = exc
    from app.ops.embedded import EmbeddedPostgres

    say(f"no PostgreSQL at {url} ({reason}); starting an embedded one under var/bench-pg")
    pg = EmbeddedPostgres(procs.ROOT / "var" / "bench-pg")
    loop = asyncio.get_running_loop()
    os.environ["BENCH_DATABASE_URL"] = await loop.run_in_executor(None, pg.start, "postgres")
    return pg


async def main_async(opts: argparse.Namespace, names: list[str], run_id: str) -> dict[str, Any]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    # Ctrl-C and SIGTERM cancel the run, so every `finally` stops the processes it started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    embedded = await ensure_postgres()
    try:
        return await run(opts, names, run_id)
    finally:
        if embedded is not None:
            embedded.stop()


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    if opts.scenario == "report":
        print(report.write_summary(opts.out).read_text())
        return 0
    if opts.rate is not None:
        opts.rates = opts.direct_rates = opts.stack_rates = [opts.rate]
    names = list(report.ALL) if opts.scenario == "all" else [opts.scenario]
    run_id = uuid.uuid4().hex[:8]
    procs.raise_fd_limit()
    procs.REDIS_APPENDFSYNC = opts.redis_appendfsync
    pinning = "server+Redis on core 0, generator on core 1" if procs.can_pin() else "none (taskset missing or 1 core)"
    meta = {**report.machine(), "argv": shlex.join(sys.argv[1:] if argv is None else argv), "pinning": pinning,
            "run_id": run_id, "redis_appendfsync": opts.redis_appendfsync}
    say(f"bench run {run_id}: {', '.join(names)}; pinning: {pinning}")
    started = time.monotonic()
    try:
        results = asyncio.run(main_async(opts, names, run_id))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted: every process of this run has been stopped")
        return 130
    ok = {k: v for k, v in results.items() if "error" not in v}
    path = report.save(ok, meta, opts.out)
    summary = report.write_summary(opts.out)
    say(f"finished in {time.monotonic() - started:.0f}s; results {path}, summary {summary}")
    text = report.summary_markdown(report.load_latest(opts.out))
    start = text.index("## Targets")
    end = text.find("\n## ", text.index("## Targets, round two"))
    print("\n" + text[start:end if end > 0 else None])
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
