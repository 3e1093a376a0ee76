"""Starting the generator process, relaying its progress, collecting its result."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any, Awaitable, Callable

from bench.procs import GENERATOR_CORE, LOG_DIR, ROOT, pinned
from bench.stack import Stack

OnAwait = Callable[[dict[str, Any]], Awaitable[None]]


def say(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", flush=True)


def step_line(step: dict[str, Any]) -> str:
    """One progress line for a realtime step."""
    d, a = step["delivery_ms"], step["ack_ms"]
    flag = "PASS" if step["passed"] else "FAIL"
    sat = f" [generator saturated: {step.get('generator_saturated_by')}]" if step.get("generator_saturated") else ""
    return (f"{flag} {step['rate']:>7g}/s offered: {step['accepted_per_s']:>8.0f} acked/s "
            f"{step['deliveries_per_s']:>8.0f} deliveries/s, delivery p50/p99 {d['p50']}/{d['p99']} ms, "
            f"ack p99 {a['p99']} ms, lost {step['lost']}, dup {step['duplicates']}, "
            f"rejected {step['rejected']}, unacked {step['unacked']}, "
            f"server {step['server_cpu_us_per_msg']} us/msg, gen cpu {step['generator_cpu_share']:.0%}{sat}, "
            f"others on the server core {step.get('server_core_foreign_share', 0):.0%}"
            + _flush_note(step))


def _flush_note(step: dict[str, Any]) -> str:
    """The stack scenario: what the worker flushed during the measured window."""
    f = step.get("flush")
    if not f:
        return ""
    if f.get("rows") is None:
        return "; flushed: not sampled"
    return f"; worker flushed {f['rows']} rows in the window (longest gap {f['longest_gap_s']} s)"


def read_line(step: dict[str, Any]) -> str:
    """One progress line for a history read phase."""
    lat, bg = step["latency_ms"], step["background_sends"]
    return (f"{step['kind']} page: {step['requests_per_s']:.0f} requests/s, p50/p99 {lat['p50']}/{lat['p99']} ms, "
            f"errors {step['errors'] or 0}; background {bg['rate']:g} msgs/s: delivery p99 "
            f"{bg['delivery_ms']['p99']} ms, lost {bg['lost']}")


async def run_generator(stack: Stack, cfg: dict[str, Any], name: str, *, timeout_s: float,
                        on_await: OnAwait | None = None) -> dict[str, Any]:
    """Run `python -m bench.generator` pinned to the generator core; return its result."""
    cfg = {**cfg, "server_pid": stack.server.pid if stack.server else None,
           "redis_pid": stack.redis.pid if stack.redis else None, "db_name": stack.db_name}
    path = stack.workdir / f"gen-{name}.json"
    path.write_text(json.dumps(cfg))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / f"{stack.tag}-generator-{name}.log", "ab")
    argv = pinned([sys.executable, "-m", "bench.generator", str(path)], GENERATOR_CORE)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
        start_new_session=True, limit=64 * 2**20, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        assert proc.stdout is not None and proc.stdin is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"generator {name} still running after {timeout_s:.0f}s")
            line = await asyncio.wait_for(proc.stdout.readline(), left)
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                say(f"generator: {line.decode(errors='replace').rstrip()}")
                continue
            kind = event.get("event")
            if kind == "progress":
                say(event["msg"])
            elif kind == "step":
                step = event["step"]
                say(step_line(step) if "passed" in step else read_line(step))
            elif kind == "await" and on_await is not None:
                await on_await(event)
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            elif kind == "result":
                result = event["result"]
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            _stop_group(proc.pid)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                _stop_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        log.close()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"generator {name} failed (exit {proc.returncode}); see {log.name}:\n"
                           + _tail(log.name))
    return result


def _stop_group(pid: int, sig: int = signal.SIGTERM) -> None:
    # The generator runs in its own session: its group id is its PID (only our child).
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""
