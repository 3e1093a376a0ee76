"""The message-lifecycle scenarios (issue 12): `reads`, `lifecycle_micro`, `search`.

- `reads`: the realtime message load, once plain and once with every recipient marking its
  room read after each message it receives (a WebSocket `read` frame); per rate: messages/s,
  read-marker frames/s and the `read` events coming back, and the server CPU per message of
  both runs on the same server and connections (their ratio is the marker load's price).
- `lifecycle_micro`: one send vs one reaction vs one mark-read, in-process, through the
  services (bench/lifecyclerun.py): Redis round trips, µs and PostgreSQL queries per call.
- `search`: 1,000,000 messages COPYed into a scratch set of rooms of the bench database
  (half of them rooms the searching user is not in), then p50/p99 of `GET /search` for
  common and for rare words, one request at a time over a keep-alive connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from bench import procs
from bench.runner import run_generator, say
from bench.stats import summarize

CHILD_TIMEOUT_S = 600


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reads (the realtime load with a read marker per delivery)")
    g.add_argument("--reads-rates", type=lambda raw: [float(x) for x in raw.split(",") if x.strip()],
                   default=[300.0, 500.0], help="aggregate send rates; each runs plain, then with read markers")
    g = p.add_argument_group("lifecycle_micro")
    g.add_argument("--micro-calls", type=int, default=2000, help="sequential calls of each service")
    g = p.add_argument_group("search")
    g.add_argument("--search-messages", type=int, default=1_000_000, help="messages COPYed into the scratch rooms")
    g.add_argument("--search-rooms", type=int, default=100, help="scratch rooms (the caller is in half)")
    g.add_argument("--search-queries", type=int, default=200, help="measured queries (half common, half rare)")


async def reads(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    from bench.scenarios import _common, _conn_specs, _groups
    from bench.stack import Stack

    stack = Stack(run_id, "reads")
    try:
        say("[reads] starting Redis, database and server")
        await stack.start()
        groups = _groups(opts.connections, opts.rooms)
        say(f"[reads] creating {opts.connections} users and {len(groups)} rooms")
        pop = await stack.populate(opts.connections, groups)
        rates = [opts.rate] if opts.rate is not None else opts.reads_rates
        cfg = {"mode": "reads", "ws_url": stack.server.ws_url, "rooms": pop.room_ids,  # type: ignore[union-attr]
               "conns": _conn_specs(pop, groups, opts.senders_share), "rates": rates, **_common(opts)}
        per_step = opts.warmup + opts.duration + 2 * opts.drain + 5
        res = await run_generator(stack, cfg, "reads", timeout_s=2 * len(rates) * per_step + 300)
        res.update({"scenario": "reads", "room_size": len(groups[0]), "senders_share": opts.senders_share})
        for pair in res["pairs"]:
            say(f"[reads] {pair['rate']:g} msgs/s: {pair['reads']['read_frames_per_s']:,.0f} read frames/s "
                f"({pair['reads']['read_events_per_s']:,.0f} read events/s back); server "
                f"{pair['plain']['server_cpu_us_per_msg']} -> {pair['reads']['server_cpu_us_per_msg']} us/msg "
                f"({pair['server_cpu_ratio']}x)")
        return res
    finally:
        stack.close()


async def _run_child(stack: Any, module: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """`python -m <module> cfg.json` pinned to the generator core; its one JSON result line."""
    from bench.scenarios import _relay

    path = stack.workdir / f"{module.rsplit('.', 1)[-1]}.json"
    path.write_text(json.dumps(cfg))
    proc = procs.Proc(module.rsplit(".", 1)[-1], [sys.executable, "-m", module, str(path)],
                      core=procs.GENERATOR_CORE, stdout=subprocess.PIPE, run_id=stack.tag)
    try:
        loop = asyncio.get_running_loop()
        out = await asyncio.wait_for(loop.run_in_executor(None, _relay, proc), CHILD_TIMEOUT_S)
    finally:
        proc.stop()
    if proc.popen.returncode != 0 or out is None:
        raise RuntimeError(f"{module} failed (exit {proc.popen.returncode}):\n{proc.log_tail()}")
    return out


async def lifecycle_micro(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    from bench.stack import Stack

    # Changes are rate limited per user like sends: out of reach here, as RATE_MESSAGES is.
    stack = Stack(run_id, "lifecycle_micro", extra_env={"RATE_CHANGES": "100000000"})
    try:
        say("[lifecycle_micro] starting Redis, database and server")
        await stack.start()
        pop = await stack.populate(2, [[0, 1]])
        cfg = {"env": stack.env, "room": pop.room_ids[0], "sender": pop.user_ids[0], "reader": pop.user_ids[1],
               # bench/stack.py names its users b<run id[:6]>_<index>
               "reader_name": f"b{run_id[:6]}_1", "calls": opts.micro_calls, "body_bytes": opts.body_bytes}
        res = await _run_child(stack, "bench.lifecyclerun", cfg)
        res["scenario"] = "lifecycle_micro"
        return res
    finally:
        stack.close()


# -- search ---------------------------------------------------------------------------------------------

VOCABULARY = 20_000
ZIPF_S = 1.05  # word frequencies of natural text: rank r about 1/r^s
WORDS_PER_MESSAGE = (6, 16)
COMMON_RANKS = range(0, 50)  # each in a few % of all messages
RARE_RANKS = range(15_000, VOCABULARY)  # each in a few dozen messages of the million


def _word(rank: int) -> str:
    """A letters-only word per rank ('simple' text search sees one token each)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = ""
    n = rank
    while True:
        n, r = divmod(n, 26)
        out += letters[r]
        if n == 0:
            break
    return "q" + out + "z"


async def _fill_search_rooms(db_url: str, room_ids: list[str], sender_ids: list[str], n: int,
                             rng: random.Random) -> dict[str, Any]:
    """COPY n messages round-robin into the rooms, the full-text index dropped meanwhile and
    rebuilt after (its exact definition read back from pg_indexes), as a bulk load would do."""
    import asyncpg

    vocab = [_word(r) for r in range(VOCABULARY)]
    cum, acc = [], 0.0
    for r in range(VOCABULARY):
        acc += 1.0 / (r + 1) ** ZIPF_S
        cum.append(acc)
    conn = await asyncpg.connect(db_url, timeout=30)
    try:
        indexdef = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'messages_body_fts'")
        if indexdef is None:
            raise RuntimeError("messages_body_fts is missing: is migration 0003 applied?")
        await conn.execute("DROP INDEX messages_body_fts")
        t = time.perf_counter()
        rooms = [uuid.UUID(r) for r in room_ids]
        senders = [uuid.UUID(s) for s in sender_ids]
        seqs = [0] * len(rooms)
        start = datetime.now(timezone.utc) - timedelta(days=30)
        step = timedelta(days=30) / max(1, n)
        chunk = 100_000
        done = 0
        while done < n:
            m = min(chunk, n - done)
            lengths = [rng.randint(*WORDS_PER_MESSAGE) for _ in range(m)]
            words = rng.choices(vocab, cum_weights=cum, k=sum(lengths))
            records, pos = [], 0
            for i, length in enumerate(lengths):
                k = done + i
                r = k % len(rooms)
                seqs[r] += 1
                records.append((uuid.uuid4(), rooms[r], seqs[r], senders[r], "text",
                                " ".join(words[pos:pos + length]), start + step * k))
                pos += length
            await conn.copy_records_to_table("messages", records=records, columns=[
                "id", "room_id", "seq", "sender_id", "kind", "body", "created_at"])
            done += m
            if done % 250_000 == 0 or done == n:
                say(f"[search] copied {done:,}/{n:,} messages")
        copy_s = time.perf_counter() - t
        t = time.perf_counter()
        await conn.execute(indexdef)
        index_s = time.perf_counter() - t
        await conn.execute("ANALYZE messages")
        await conn.executemany("UPDATE rooms SET last_seq = $2 WHERE id = $1", list(zip(rooms, seqs)))
        size = await conn.fetchval("SELECT pg_relation_size('messages_body_fts')")
    finally:
        await conn.close()
    return {"copy_s": round(copy_s, 1), "copy_rows_per_s": round(n / copy_s), "index_build_s": round(index_s, 1),
            "index_mb": round(size / 2**20, 1)}


async def search(opts: argparse.Namespace, run_id: str) -> dict[str, Any]:
    import httpx

    from bench.stack import Stack

    # One user owns half the rooms: room creation is rate limited per user.
    stack = Stack(run_id, "search", extra_env={"RATE_ROOMS": "100000000"})
    rng = random.Random(12)
    try:
        say("[search] starting Redis, database and server")
        await stack.start()
        half = max(1, opts.search_rooms // 2)
        # user 0 (the searcher) owns half the rooms; users 2/3 the other half, which user 0 is not in
        groups = [[0, 1]] * half + [[2, 3]] * half
        pop = await stack.populate(4, groups)
        senders = [pop.user_ids[g[1]] for g in groups]
        n = opts.search_messages
        say(f"[search] COPYing {n:,} messages into {len(groups)} rooms ({half} of them the searcher's)")
        fill = await _fill_search_rooms(stack.db_url, pop.room_ids, senders, n, rng)
        say(f"[search] copied in {fill['copy_s']} s, full-text index built in {fill['index_build_s']} s "
            f"({fill['index_mb']} MB)")
        per_kind = max(1, opts.search_queries // 2)
        common = [_word(rng.choice(COMMON_RANKS)) for _ in range(per_kind)]
        rare = [_word(rng.choice(RARE_RANKS)) for _ in range(per_kind)]
        headers = {"Authorization": f"Bearer {pop.tokens[0]}"}
        out: dict[str, Any] = {"scenario": "search", "messages": n, "rooms": len(groups), "searcher_rooms": half,
                               "vocabulary": VOCABULARY, "zipf_s": ZIPF_S, **fill}
        async with httpx.AsyncClient(base_url=stack.server.base_url, headers=headers, timeout=30) as client:  # type: ignore[union-attr]
            for q in common[:10] + rare[:10]:  # warm-up: connections, plans, caches
                (await client.get("/search", params={"q": q})).raise_for_status()
            for kind, queries in (("common", common), ("rare", rare)):
                lat, hits, errors = [], [], 0
                for q in queries:
                    t = time.perf_counter()
                    resp = await client.get("/search", params={"q": q})
                    lat.append((time.perf_counter() - t) * 1e6)
                    if resp.status_code != 200:
                        errors += 1
                        continue
                    hits.append(len(resp.json()["items"]))
                out[kind] = {"queries": len(queries), "latency_ms": summarize(lat, 1e-3, 2), "errors": errors,
                             "mean_items": round(sum(hits) / max(1, len(hits)), 1)}
                say(f"[search] {kind} words: p50 {out[kind]['latency_ms']['p50']} ms, "
                    f"p99 {out[kind]['latency_ms']['p99']} ms, {out[kind]['mean_items']} items per page")
        db_ms = await _database_share(stack, pop.room_ids[:half], common[:20], rare[:20])
        for kind in ("common", "rare"):
            out[kind]["database_ms"] = db_ms.get(kind)
        everything = [out["common"]["latency_ms"]["p99"], out["rare"]["latency_ms"]["p99"]]
        out["p99_ms"] = max(v for v in everything if v is not None) if all(v is not None for v in everything) else None
        out["passed"] = out["p99_ms"] is not None and out["p99_ms"] < 50 and not (
            out["common"]["errors"] or out["rare"]["errors"])
        return out
    finally:
        stack.close()


async def _database_share(stack: Any, room_ids: list[str], common: list[str], rare: list[str]) -> dict[str, Any]:
    """PostgreSQL's part of a search: EXPLAIN ANALYZE's execution time of the service's own query
    (app.search._SEARCH_SQL, its arguments built as the service builds them), per kind of word.
    Diagnostic only: a renamed internal gives "n/a", not a failed run."""
    import asyncpg

    try:
        from app import search as svc
        from app.messages import retention_cutoff

        sql, parse = svc._SEARCH_SQL, svc.parse_query  # noqa: SLF001 - the bench reads the service's query
    except (ImportError, AttributeError) as exc:
        say(f"[search] no database timing: {exc}")
        return {}
    settings = stack.settings
    out: dict[str, Any] = {}
    conn = await asyncpg.connect(stack.db_url, timeout=30)
    try:
        for kind, words in (("common", common), ("rare", rare)):
            times = []
            for q in words:
                args = [parse(settings, q).tsquery(), [uuid.UUID(r) for r in room_ids], retention_cutoff(settings),
                        settings.search_candidates, []]
                plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
                plan = json.loads(plan) if isinstance(plan, str) else plan
                times.append(float(plan[0]["Execution Time"]) * 1000)
            out[kind] = summarize(times, 1e-3, 2)
    except Exception as exc:  # noqa: BLE001 - diagnostic only
        say(f"[search] no database timing: {type(exc).__name__}: {exc}")
    finally:
        await conn.close()
    return out


SCENARIOS = {"reads": reads, "lifecycle_micro": lifecycle_micro, "search": search}
