"""Results on disk and the markdown summary (bench/results/summary.md) with the targets table.

Each scenario's latest result is kept as bench/results/<scenario>.json (git-ignored),
each full run as bench/results/run-<stamp>.json; the summary is rebuilt from the latest
result of every scenario, so running one scenario again updates only its rows.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.procs import ROOT

RESULTS = ROOT / "bench" / "results"
ORDER = ("realtime", "direct", "flush", "history", "idle", "bare", "stack", "storm", "reads", "lifecycle_micro",
         "search")
ALL = ("bare", "stack", "storm", "realtime", "direct", "flush", "history", "idle", "lifecycle_micro")  # `all`;
# reads and search (issue 12) take about a minute each: `make bench-lifecycle`


def save(results: dict[str, Any], meta: dict[str, Any], out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, res in results.items():
        (out / f"{name}.json").write_text(json.dumps({"meta": meta, "result": res}, indent=1))
    path = out / f"run-{stamp}.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return path


def load_latest(out: Path = RESULTS) -> dict[str, dict[str, Any]]:
    latest = {}
    for name in ORDER:
        path = out / f"{name}.json"
        if path.exists():
            latest[name] = json.loads(path.read_text())
    return latest


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "commit": commit, "host": platform.node()}


# -- formatting -------------------------------------------------------------------

def _n(v: Any, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def _missed(value: float, target: float, higher_is_better: bool) -> str:
    if higher_is_better:
        return "met" if value >= target else f"missed by {100 * (1 - value / target):.0f}%"
    return "met" if value <= target else f"missed by {100 * (value / target - 1):.0f}%"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _steps(res: dict[str, Any] | None) -> list[dict[str, Any]]:
    return (res or {}).get("steps", [])


def _best_step(res: dict[str, Any] | None) -> dict[str, Any] | None:
    passing = [s for s in _steps(res) if s["passed"]]
    return max(passing, key=lambda s: s["rate"]) if passing else None


def targets(latest: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(figure, target, measured, verdict) rows of the issue's targets table."""
    rt = latest.get("realtime", {}).get("result")
    direct = latest.get("direct", {}).get("result")
    flush = latest.get("flush", {}).get("result")
    idle = latest.get("idle", {}).get("result")
    rows: list[tuple[str, str, str, str]] = []
    not_run = ("not run", "-")

    best = _best_step(rt)
    if rt is None:
        rows.append(("highest rate with p99 < 100 ms and 0 lost", ">= 5,000 msgs/s (45,000 deliveries/s)", *not_run))
    elif best is None:
        rows.append(("highest rate with p99 < 100 ms and 0 lost", ">= 5,000 msgs/s (45,000 deliveries/s)",
                     f"no step passed (lowest tried {_n(_steps(rt)[0]['rate'])}/s)", "missed"))
    else:
        sat = "; generator saturated at the next step" if any(
            s.get("generator_saturated") and not s["passed"] for s in _steps(rt)) else ""
        top = " (highest step tried: raise --rates)" if best is _steps(rt)[-1] else ""
        rows.append(("highest rate with p99 < 100 ms and 0 lost", ">= 5,000 msgs/s (45,000 deliveries/s)",
                     f"{_n(best['rate'])} msgs/s ({_n(best['deliveries_per_s'])} deliveries/s){top}{sat}",
                     _missed(best["rate"], 5000, True)))

    at1k = next((s for s in _steps(rt) if s["rate"] == 1000), None)
    if at1k is None:
        rows.append(("p99 delivery latency at 1,000 msgs/s", "<= 3 ms", "no 1,000 msgs/s step", "-"))
    else:
        p99 = at1k["delivery_ms"]["p99"]
        rows.append(("p99 delivery latency at 1,000 msgs/s", "<= 3 ms",
                     f"{_n(p99, 2)} ms (p50 {_n(at1k['delivery_ms']['p50'], 2)} ms)",
                     _missed(p99, 3, False) if p99 is not None else "-"))

    if best is None:
        rows.append(("server CPU per message", "<= 150 us", "not measured", "-"))
    else:
        us = best["server_cpu_us_per_msg"]
        redis_us = best["redis_cpu_s_per_1000_msgs"] * 1000
        rows.append(("server CPU per message", "<= 150 us",
                     f"{_n(us)} us at {_n(best['rate'])} msgs/s (+ Redis {_n(redis_us)} us)",
                     _missed(us, 150, False)))

    if idle is None:
        rows.append(("idle memory per connection", "<= 20 KB", *not_run))
    else:
        kb = idle["rss_per_connection_kb"]
        rows.append(("idle memory per connection", "<= 20 KB",
                     f"{_n(kb, 1)} KiB ({_n(idle['connections'])} connections; marginal "
                     f"{_n(idle.get('rss_per_connection_marginal_kb'), 1)} KiB)", _missed(kb, 20, False)))

    if flush is None:
        rows.append(("flush into PostgreSQL", ">= 250,000 msgs/s", *not_run))
    else:
        ok = "" if flush.get("passed") else " - CHECK FAILED (lost/duplicates/gaps)"
        rows.append(("flush into PostgreSQL", ">= 250,000 msgs/s",
                     f"{_n(flush['rows_per_s'])} rows/s ({_n(flush['messages'])} messages, "
                     f"{flush['db_calls_per_batch']} DB calls per {_n(flush['batch_size'])}-row batch){ok}",
                     _missed(flush["rows_per_s"], 250_000, True)))

    dbest = _best_step(direct)
    if rt is None or direct is None or best is None:
        rows.append(("cache vs direct", ">= 3x the highest passing rate", *not_run))
    elif dbest is None:
        low = _steps(direct)[0]["rate"] if _steps(direct) else None
        rows.append(("cache vs direct", ">= 3x the highest passing rate",
                     f"direct passed no step (lowest {_n(low)}/s): > {_n(best['rate'] / low, 1) if low else 'n/a'}x",
                     "met" if low and best["rate"] / low >= 3 else "-"))
    else:
        ratio = best["rate"] / dbest["rate"]
        # A mode whose every step passed was not pushed to its limit: the ratio is only a bound.
        cache_capped = all(s["passed"] for s in _steps(rt))
        direct_capped = all(s["passed"] for s in _steps(direct))
        note, verdict = "", _missed(ratio, 3, True)
        if cache_capped and direct_capped:
            note, verdict = "; neither mode reached its limit", "inconclusive"
        elif cache_capped:
            note = "; cache mode did not reach its limit (ratio is a lower bound)"
            verdict = "met" if ratio >= 3 else "inconclusive"
        elif direct_capped:
            note = "; direct mode did not reach its limit (ratio is an upper bound)"
            verdict = "inconclusive" if ratio >= 3 else verdict
        rows.append(("cache vs direct", ">= 3x the highest passing rate",
                     f"{ratio:.1f}x ({_n(best['rate'])} vs {_n(dbest['rate'])} msgs/s){note}", verdict))

    failing = next((s for s in _steps(rt) if not s["passed"]), None)
    if failing is None:
        rows.append(("past the limit", "back-pressure, goodput holds, nothing lost",
                     "not reached (every step passed)" if rt else "not run", "-"))
    else:
        final = failing.get("after_final_drain") or {}
        lost = final.get("lost", failing["lost"])
        late = failing["lost"] - lost
        holds = lost == 0 and failing["duplicates"] == 0 and (
            best is None or failing["accepted_per_s"] >= 0.9 * best["accepted_per_s"])
        rows.append(("past the limit", "back-pressure, goodput holds, nothing lost",
                     f"{_n(failing['rate'])}/s offered: {_n(failing['accepted_per_s'])}/s acked, ack p99 "
                     f"{_n(failing['ack_ms']['p99'])} ms, delivery p99 {_n(failing['delivery_ms']['p99'])} ms, "
                     f"{_n(failing['rejected'])} rejected, {_n(lost)} lost"
                     + (f" ({_n(late)} more arrived late)" if late else "")
                     + f", {_n(failing['duplicates'])} duplicates",
                     "holds" if holds else "does not hold"))
    rows += _lifecycle_targets(latest)
    return rows


def _run_note(latest: dict[str, dict[str, Any]], ours: str, theirs: str) -> str:
    """'' when both results come from one run, else a warning (ratios need the same run)."""
    a = latest.get(ours, {}).get("meta", {}).get("run_id")
    b = latest.get(theirs, {}).get("meta", {}).get("run_id")
    return "" if a == b else f" (NOT the same run: {ours} {a}, {theirs} {b})"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def targets_round_two(latest: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str, str]]:
    """Issue 14's targets: (figure, target, bare server, this server, ratio, verdict)."""
    stack = latest.get("stack", {}).get("result")
    bare = latest.get("bare", {}).get("result")
    storm = latest.get("storm", {}).get("result")
    flush = latest.get("flush", {}).get("result")
    idle = latest.get("idle", {}).get("result")
    rows: list[tuple[str, str, str, str, str, str]] = []
    nr = "not run"

    # CPU per message at the highest rate both pass.
    fig, tgt = "CPU per message, server tree + Redis, at the highest rate both pass", "<= 1.25x"
    if stack is None or bare is None:
        rows.append((fig, tgt, "n/a" if bare else f"{nr} (bare)", "n/a" if stack else f"{nr} (stack)", "-", "-"))
    else:
        ours = {s["rate"]: s for s in _steps(stack) if s["passed"]}
        theirs = {s["rate"]: s for s in _steps(bare) if s["passed"]}
        both = sorted(set(ours) & set(theirs))
        if not both:
            rows.append((fig, tgt, f"passed {sorted(theirs) or 'none'}", f"passed {sorted(ours) or 'none'}",
                         "-", "no rate passed in both"))
        else:
            r = both[-1]
            o, t = ours[r], theirs[r]
            o_us = o["server_cpu_us_per_msg"] + o["redis_cpu_s_per_1000_msgs"] * 1000
            t_us = t["server_cpu_us_per_msg"] + t["redis_cpu_s_per_1000_msgs"] * 1000
            ratio = _ratio(o_us, t_us)
            rows.append((fig, tgt, f"{_n(t_us)} us at {_n(r)} msgs/s",
                         f"{_n(o_us)} us ({_n(o['server_cpu_us_per_msg'])} tree + "
                         f"{_n(o['redis_cpu_s_per_1000_msgs'] * 1000)} Redis) at {_n(r)} msgs/s"
                         + _run_note(latest, "stack", "bare"),
                         f"{ratio}x", _missed(ratio, 1.25, False) if ratio is not None else "-"))

    # p99 at 1,000 msgs/s, whole stack on one core.
    fig, tgt = "p99 delivery at 1,000 msgs/s, whole stack on one core", "<= 3x and <= 10 ms"
    o = next((s for s in _steps(stack) if s["rate"] == 1000), None)
    t = next((s for s in _steps(bare) if s["rate"] == 1000), None)
    if o is None or t is None:
        rows.append((fig, tgt, "n/a" if bare else f"{nr} (bare)", "n/a" if stack else f"{nr} (stack)", "-", "-"))
    else:
        op, tp = o["delivery_ms"]["p99"], t["delivery_ms"]["p99"]
        ratio = _ratio(op, tp)
        ok = ratio is not None and op is not None and ratio <= 3 and op <= 10
        worst = max(ratio / 3 if ratio else 0, op / 10 if op else 0)
        flushed = (o.get("flush") or {}).get("rows")
        rows.append((fig, tgt, f"{_n(tp, 2)} ms (p50 {_n(t['delivery_ms']['p50'], 2)})",
                     f"{_n(op, 2)} ms (p50 {_n(o['delivery_ms']['p50'], 2)}; worker flushed {_n(flushed)} rows "
                     f"meanwhile; others' load on the server core {o.get('server_core_foreign_share', 0):.0%})"
                     + _run_note(latest, "stack", "bare"),
                     f"{ratio}x", "met" if ok else f"missed by {100 * (worst - 1):.0f}%"))

    first = ((storm or {}).get("server") or {}).get("first_connect") or {}
    bfirst = ((storm or {}).get("bare") or {}).get("first_connect") or {}

    # Idle memory per connection: the storm's first connect, the same N and method for both.
    fig, tgt = "idle memory per connection", "<= 1.1x"
    if not first or not bfirst:
        rows.append((fig, tgt, nr, nr, "-", "-"))
    else:
        o_kb, t_kb = first.get("rss_per_connection_kb"), bfirst.get("rss_per_connection_kb")
        ratio = _ratio(o_kb, t_kb)
        extra = f"; idle scenario: {_n(idle['rss_per_connection_kb'], 1)} KiB" if idle else ""
        rows.append((fig, tgt, f"{_n(t_kb, 1)} KiB ({_n(bfirst['connected'])} connections)",
                     f"{_n(o_kb, 1)} KiB ({_n(first['connected'])} connections{extra})", f"{ratio}x",
                     _missed(ratio, 1.1, False) if ratio is not None else "-"))

    # Connections opened per second, at 5,000 and 10,000.
    fig, tgt = "connections opened per second (5,000 and 10,000)", ">= 0.8x"
    if not first or not bfirst:
        rows.append((fig, tgt, nr, nr, "-", "-"))
    else:
        marks = [m for m in ("5000", "10000") if m in first.get("connects_per_s_at", {})] or \
            [str(first["connected"])]
        o_s = [(m, first["connects_per_s_at"].get(m), bfirst.get("connects_per_s_at", {}).get(m)) for m in marks]
        ratios = [_ratio(o, t) for _m, o, t in o_s]
        worst = min((r for r in ratios if r is not None), default=None)
        rows.append((fig, tgt, ", ".join(f"{_n(t)}/s at {_n(int(m))}" for m, _o, t in o_s),
                     ", ".join(f"{_n(o)}/s at {_n(int(m))}" for m, o, _t in o_s)
                     + f" ({storm['concurrency']} handshakes in flight)",
                     ", ".join(f"{r}x" for r in ratios), _missed(worst, 0.8, True) if worst is not None else "-"))

    # The storm itself.
    fig, tgt = "reconnect storm with `sync`: every client caught up", "<= 10 s"
    st = ((storm or {}).get("server") or {}).get("storm")
    if not st:
        rows.append((fig, tgt, "-", nr if storm is None else "no storm (first connect incomplete)", "-", "-"))
    else:
        t_all = st["all_caught_up_s"]
        ok_data = st["missed_expected"] is not None and st["missed_received"] == st["missed_expected"]
        rows.append((fig, tgt, "n/a (the bare server has no sync)",
                     (f"{_n(t_all, 1)} s" if t_all is not None else f"{st['caught_up']}/{st['clients']} caught up")
                     + f" for {_n(st['clients'])} clients (hello p99 {_n(st['hello_s']['p99'], 2)} s; "
                       f"{_n(st['missed_received'])}/{_n(st['missed_expected'])} missed messages; "
                       f"retries {st['retries'] or 0})", "-",
                     ("met" if t_all <= 10 else f"missed by {100 * (t_all / 10 - 1):.0f}%") if t_all is not None and ok_data
                     else "missed (not everyone caught up)" if t_all is None else "missed (messages missing)"))

    # Flush vs one COPY.
    fig, tgt = "flush rows/s vs one COPY of 1,000,000 rows, same database", ">= 50%"
    ceiling = (flush or {}).get("copy_ceiling")
    if not flush or not ceiling:
        rows.append((fig, tgt, "-", nr if not flush else "no COPY ceiling measured", "-", "-"))
    else:
        share = flush["share_of_copy_ceiling"]
        rows.append((fig, tgt, f"COPY: {_n(ceiling['rows_per_s'])} rows/s ({_n(ceiling['rows'])} rows)",
                     f"flush: {_n(flush['rows_per_s'])} rows/s ({_n(flush['messages'])} messages)",
                     f"{100 * share:.0f}%", _missed(share, 0.5, True)))
    return rows


def _lifecycle_targets(latest: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """Issue 12's performance rows, only for the lifecycle scenarios that were run."""
    rows: list[tuple[str, str, str, str]] = []
    micro = latest.get("lifecycle_micro", {}).get("result")
    if micro:
        for kind, label in (("react", "a reaction"), ("mark_read", "marking a room read")):
            if kind not in micro:
                rows.append((f"{label} vs a send", "<= a send: 1 Redis round trip, 0 PostgreSQL", "not measured", "-"))
                continue
            r, send = micro[kind], micro["send"]
            ok = (r["postgres_queries"] == 0 and r["redis_round_trips_per_call"] <= 1.0
                  and r["cpu_us_per_call"] <= send["cpu_us_per_call"] * 1.1)
            rows.append((f"{label} vs a send", "<= a send: 1 Redis round trip, 0 PostgreSQL",
                         f"{r['redis_round_trips_per_call']} round trips, {r['postgres_queries']} PostgreSQL queries, "
                         f"{_n(r['cpu_us_per_call'])} vs {_n(send['cpu_us_per_call'])} CPU us per call",
                         "met" if ok else "missed"))
    reads = latest.get("reads", {}).get("result")
    if reads and reads.get("pairs"):
        top = reads["pairs"][-1]
        rows.append(("read markers beside the message load", "measured (no target)",
                     f"{_n(top['rate'])} msgs/s + {_n(top['reads']['read_frames_per_s'])} read frames/s: server "
                     f"{_n(top['reads']['server_cpu_us_per_msg'])} vs {_n(top['plain']['server_cpu_us_per_msg'])} us "
                     f"per message ({top['server_cpu_ratio']}x), lost {top['reads']['lost']}", "-"))
    search = latest.get("search", {}).get("result")
    if search:
        rows.append(("search p99 over flushed messages", "< 50 ms over 1,000,000",
                     f"{_n(search['p99_ms'], 1)} ms (common words p50 {_n(search['common']['latency_ms']['p50'], 1)} ms, "
                     f"rare p50 {_n(search['rare']['latency_ms']['p50'], 1)} ms; {_n(search['messages'])} messages)",
                     _missed(search["p99_ms"], 50, False) if search["p99_ms"] is not None else "-"))
    return rows


def _step_table(res: dict[str, Any]) -> list[str]:
    lines = ["| offered msgs/s | acked/s | deliveries/s | delivery p50 / p95 / p99 ms | ack p99 ms | lost | dup "
             "| rejected | server us/msg | Redis us/msg | PostgreSQL us/msg | server+Redis core | RSS MB "
             "| generator core, send lag p99 ms | others on the server core | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in _steps(res):
        d = s["delivery_ms"]
        sat = " (saturated)" if s.get("generator_saturated") else ""
        lines.append(
            f"| {_n(s['rate'])} | {_n(s['accepted_per_s'])} | {_n(s['deliveries_per_s'])} | "
            f"{_n(d['p50'], 2)} / {_n(d['p95'], 2)} / {_n(d['p99'], 2)} | {_n(s['ack_ms']['p99'], 2)} | "
            f"{s['lost']} | {s['duplicates']} | {s['rejected']} | {_n(s['server_cpu_us_per_msg'])} | "
            f"{_n(s['redis_cpu_s_per_1000_msgs'] * 1000)} | {_n(s.get('postgres_cpu_s_per_1000_msgs', 0) * 1000)} | "
            f"{s['server_redis_cpu_share']:.0%} | {_n(s['server_rss_mb'], 1)} | "
            f"{s['generator_cpu_share']:.0%}, {_n(s['send_lag_ms']['p99'], 1)}{sat} | "
            f"{_pct(s.get('server_core_foreign_share'))} | {'pass' if s['passed'] else 'FAIL'} |")
    return lines


def summary_markdown(latest: dict[str, dict[str, Any]]) -> str:
    out = ["# Benchmark summary", "",
           "Generated by `make bench` (`python -m bench`); see docs/performance.md for the method.", ""]
    meta = next((v["meta"] for v in latest.values()), {})
    if meta:
        out += [f"Machine: {meta.get('cpu')} ({meta.get('cores')} cores), Python {meta.get('python')}, "
                f"commit {meta.get('commit')}, pinning: {meta.get('pinning')}.", ""]
    out += ["## Targets", "", "| figure | target | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(latest)]
    out += ["", "## Targets, round two (issue 14)", "",
            "Ratios to the bare `websockets` server (bench/bare.py) measured in the same run on the same "
            "machine; the stack is `make run`'s whole tree (server, worker, scheduler) with its Redis on core 0.",
            "", "| figure | target | bare `websockets` | this server | ratio | verdict |", "|---|---|---|---|---|---|"]
    out += [f"| {' | '.join(r)} |" for r in targets_round_two(latest)]
    bare = latest.get("bare", {}).get("result")
    if bare:
        bb = _best_step(bare)
        top = max(_steps(bare), key=lambda s: s["generator_cpu_share"], default=None)
        out += ["", f"For scale, the bare in-memory broadcast server (bench/bare.py) with the same generator: "
                    f"{_n(bb['rate']) if bb else 'no step passed'} msgs/s passing; generator CPU up to "
                    f"{top['generator_cpu_share']:.0%} of its core at {_n(top['rate'])} msgs/s offered."
                if top else ""]
    for name in ORDER:
        if name not in latest:
            continue
        res, meta = latest[name]["result"], latest[name]["meta"]
        out += ["", f"## {name}", "", f"Run {meta.get('date')}, arguments `{meta.get('argv')}`.", ""]
        if name in ("realtime", "direct", "bare", "stack"):
            target = ("the bare broadcast server (bench/bare.py)" if name == "bare"
                      else f"`make run`'s tree (server, worker, scheduler), FLUSH_BACKLOG_THRESHOLD="
                           f"{res.get('flush_backlog_threshold')}" if name == "stack"
                      else f"CHAT_WRITE_MODE={res['write_mode']}")
            out.append(f"{res['connections']} connections, {res['rooms']} rooms of {res['room_size']}, "
                       f"{res['senders']} senders, {target}; highest passing rate: "
                       f"{_n(res['highest_passing_rate'])} msgs/s.")
            out += [""] + _step_table(res)
            if res.get("ab"):
                out += ["", "Paired in one run (`--stack-ab`): the worker's and scheduler's niceness flipped "
                            "between consecutive steps.", "",
                        "| msgs/s | worker nice | steps | delivery p50 ms (each) | delivery p99 ms (each) "
                        "| median p50 / p99 ms | others on the server core |", "|---|---|---|---|---|---|---|"]
                for row in res["ab"]:
                    for key, v in row.items():
                        if key.startswith("nice_"):
                            out.append(f"| {_n(row['rate'])} | {key[5:]} | {v['steps']} | "
                                       f"{', '.join(_n(x, 1) for x in v['p50_ms'])} | "
                                       f"{', '.join(_n(x, 1) for x in v['p99_ms'])} | "
                                       f"{_n(v['median_p50_ms'], 2)} / {_n(v['median_p99_ms'], 2)} | "
                                       f"{', '.join(f'{x:.0%}' for x in v['others_on_core'] if x is not None)} |")
            if res.get("profile"):
                from bench.profile import markdown

                out += ["", f"### Where the time goes ({name})", ""] + markdown(res["profile"])
        elif name == "flush":
            out.append(f"{_n(res['messages'])} messages over {res['rooms']} rooms accepted through the real "
                       f"accept path ({_n(res['accept_per_s'])}/s in one process), then flushed by "
                       f"app.flush.flush_all_pending (concurrency {res['concurrency']}): "
                       f"**{_n(res['rows_per_s'])} rows/s** ({res['flush_s']} s, {res['batches']} batches, "
                       f"{res['db_calls']} database calls {res['db_calls_by_kind']}, "
                       f"{res['redis_commands']} Redis commands). Lost {res['lost']}, duplicates "
                       f"{res['duplicates']}, rooms with gaps {res['rooms_with_gaps']}.")
            c = res.get("copy_ceiling")
            if c:
                out += ["", f"The ceiling, measured after it on the same database: one binary COPY of "
                            f"{_n(c['rows'])} rows into `messages` (rows made by PostgreSQL beforehand, no Python "
                            f"per row; FK triggers {c.get('fk_triggers', 'fired')}) took {c['seconds']} s: **{_n(c['rows_per_s'])} rows/s**; the flush reached "
                            f"{100 * res['share_of_copy_ceiling']:.0f}% of it."]
        elif name == "storm":
            out += _storm_md(res)
        elif name == "history":
            out += ["| page | requests/s | p50 ms | p99 ms | errors | background sends (p99 delivery ms, lost) |",
                    "|---|---|---|---|---|---|"]
            for kind, ph in res["phases"].items():
                bg = ph["background_sends"]
                out.append(f"| {kind} | {_n(ph['requests_per_s'])} | {_n(ph['latency_ms']['p50'], 2)} | "
                           f"{_n(ph['latency_ms']['p99'], 2)} | {ph['errors'] or 0} | "
                           f"{_n(bg['rate'])}/s ({_n(bg['delivery_ms']['p99'], 2)}, {bg['lost']}) |")
        elif name == "idle":
            out.append(f"{_n(res['connections'])} idle connections ({res['requested']} requested, failures "
                       f"{res['connect_failures'] or 0}): server RSS {res['server_rss_before_mb']} MB -> "
                       f"{res.get('server_rss_half_mb')} MB at half -> {res['server_rss_after_mb']} MB, "
                       f"**{res['rss_per_connection_kb']} KiB per connection** (second half alone: "
                       f"{res.get('rss_per_connection_marginal_kb')} KiB); "
                       f"{res['connects_per_s']} connects/s; idle server CPU {res['idle_server_cpu_share']:.1%}; "
                       f"{res['still_open']} still open after the hold.")
        elif name in LIFECYCLE:
            out += LIFECYCLE[name](res)
    return "\n".join(out) + "\n"


def _reads_md(res: dict[str, Any]) -> list[str]:
    out = [f"{res['connections']} connections, {res['rooms']} rooms of {res['room_size']}, {res['senders']} senders; "
           "each rate runs plain, then with every recipient sending a `read` frame per message it receives.", "",
           "| msgs/s | run | acked/s | read frames/s | read events/s | delivery p99 ms | lost | server us/msg "
           "| Redis us/msg | PostgreSQL us/msg | server CPU vs plain | result |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair in res["pairs"]:
        for kind in ("plain", "reads"):
            s = pair[kind]
            ratio = f"{pair['server_cpu_ratio']}x" if kind == "reads" else "1x"
            out.append(f"| {_n(pair['rate'])} | {kind} | {_n(s['accepted_per_s'])} | {_n(s.get('read_frames_per_s'))} | "
                       f"{_n(s.get('read_events_per_s'))} | {_n(s['delivery_ms']['p99'], 2)} | {s['lost']} | "
                       f"{_n(s['server_cpu_us_per_msg'])} | {_n(s['redis_cpu_s_per_1000_msgs'] * 1000)} | "
                       f"{_n(s.get('postgres_cpu_s_per_1000_msgs', 0) * 1000)} | {ratio} | "
                       f"{'pass' if s['passed'] else 'FAIL'} |")
    return out


def _micro_md(res: dict[str, Any]) -> list[str]:
    out = [f"{_n(res['calls'])} sequential calls of each service, in-process (bench/lifecyclerun.py).", "",
           "| call | wall us/call (p50 / p99) | CPU us/call | Redis round trips/call | Redis commands/call (with those its script runs) "
           "| PostgreSQL queries |", "|---|---|---|---|---|---|"]
    for kind, label in (("send", "accept_message (send)"), ("react", "lifecycle.react (cached message)"),
                        ("mark_read", "reads.mark_read")):
        r = res.get(kind)
        if r is None:
            out.append(f"| {label} | not measured | | | | |")
            continue
        out.append(f"| {label} | {_n(r['wall_us_per_call'])} ({_n(r['latency_us']['p50'])} / "
                   f"{_n(r['latency_us']['p99'])}) | {_n(r['cpu_us_per_call'])} | {r['redis_round_trips_per_call']} | "
                   f"{r['redis_commands_per_call']} | {r['postgres_queries']} |")
    out += ["", "; ".join(f"{k} vs send: {res[k + '_vs_send_wall']}x wall, {res[k + '_vs_send_cpu']}x CPU"
                          for k in ("react", "mark_read") if k + "_vs_send_wall" in res) + "."]
    return out


def _search_md(res: dict[str, Any]) -> list[str]:
    out = [f"{_n(res['messages'])} messages COPYed into {res['rooms']} rooms ({res['searcher_rooms']} of them the "
           f"searcher's) in {res['copy_s']} s, full-text index rebuilt in {res['index_build_s']} s "
           f"({res['index_mb']} MB); `GET /search`, one request at a time.", "",
           "| words | queries | p50 ms | p99 ms | max ms | items per page | errors | PostgreSQL p50 / p99 ms |",
           "|---|---|---|---|---|---|---|---|"]
    for kind in ("common", "rare"):
        r = res[kind]
        lat, db = r["latency_ms"], r.get("database_ms") or {}
        out.append(f"| {kind} | {r['queries']} | {_n(lat['p50'], 2)} | {_n(lat['p99'], 2)} | {_n(lat['max'], 2)} | "
                   f"{r['mean_items']} | {r['errors']} | {_n(db.get('p50'), 2)} / {_n(db.get('p99'), 2)} |")
    out += ["", f"p99 over both: {_n(res['p99_ms'], 2)} ms (target < 50 ms: {'met' if res['passed'] else 'missed'})."]
    return out


def _storm_md(res: dict[str, Any]) -> list[str]:
    b = (res.get("bare") or {}).get("first_connect") or {}
    srv = res.get("server") or {}
    f, st = srv.get("first_connect") or {}, srv.get("storm")
    out = [f"{_n(res['clients'])} clients in {_n(res['rooms'])} rooms of {res['room_size']}, "
           f"{res['concurrency']} handshakes in flight; {res['missed_per_room']} messages per room sent over "
           "HTTP while everyone was away; a client closed with 1013 retries after `retry_after_ms` plus jitter.", "",
           "| | bare server | this server |", "|---|---|---|",
           f"| first connect: all open | {_n(b.get('connect_s'), 2)} s | {_n(f.get('connect_s'), 2)} s |",
           f"| connections opened per second | {b.get('connects_per_s_at')} | {f.get('connects_per_s_at')} |",
           f"| memory per connection | {_n(b.get('rss_per_connection_kb'), 1)} KiB | "
           f"{_n(f.get('rss_per_connection_kb'), 1)} KiB |"]
    if st:
        out += [f"| storm: every client has its hello | - | {_n(st['all_hello_s'], 2)} s "
                f"(p50 {_n(st['hello_s']['p50'], 2)}, p99 {_n(st['hello_s']['p99'], 2)}) |",
                f"| storm: every client caught up (hello + sync) | - | {_n(st['all_caught_up_s'], 2)} s "
                f"(p50 {_n(st['caught_up_s']['p50'], 2)}, p99 {_n(st['caught_up_s']['p99'], 2)}) |",
                f"| reconnects per second | - | {_n(st['reconnects_per_s'])} |",
                f"| missed messages received / expected | - | {_n(st['missed_received'])} / "
                f"{_n(st['missed_expected'])} (gaps {st['gaps']}) |",
                f"| retries (why) | - | {st['retries'] or 'none'} |",
                f"| failures | - | {st['failed'] or 'none'}; errors {st['errors'] or 'none'} |",
                f"| server / Redis CPU during the storm | - | {st['server_cpu_share']:.0%} / "
                f"{st['redis_cpu_share']:.0%} of a core |"]
    elif srv.get("note"):
        out += ["", srv["note"]]
    return out


LIFECYCLE = {"reads": _reads_md, "lifecycle_micro": _micro_md, "search": _search_md}


def write_summary(out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.md"
    path.write_text(summary_markdown(load_latest(out)))
    return path
