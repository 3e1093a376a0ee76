"""Which tests are `e2e`: the rule tests/conftest.py applies at collection (a support module).

A test is e2e when it starts a process (server, worker, scheduler, redis-server, postgres,
Chromium, the launcher, the bench, a CLI) or uses one the session started, so that
`-m 'not e2e'` is an in-process inner loop. Three signs, any one suffices:

- it lives under a directory whose tests all start processes (E2E_DIRS);
- it uses a process fixture: a fixture whose body starts a process (PROCESS_CALLS) or names
  the cluster fixture (CLUSTER_FIXTURE, even through getfixturevalue), or that depends on such a fixture, found by reading every fixture under tests/ (so a new server
  fixture needs no list to be kept up to date), pytest's own closure giving the indirect uses;
- its module's source starts processes itself (PROCESS_CALLS anywhere in the module);
- it runs on the Redis Cluster engine (`redis_engine` param "cluster": the cluster's nodes are
  processes the session starts; see `engine_reason`).

tests/test_markers.py checks the rule against the run's own items.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Mapping

# Every test under these directories (of tests/) starts or talks to processes of its own.
E2E_DIRS = frozenset({"e2e", "faults", "browser", "bench", "fuzz"})

# Source fragments that start a process: the process helpers (tests/support, tests/faults/_procs,
# app/ops), the stacks built on them, the launcher, Playwright's browser, and subprocess itself.
PROCESS_CALLS = ("subprocess.", "Proc(", "OwnServers(", "Stack(", "RedisServer(", "PgCluster(",
                 "start_worker(", "start_server(", "start_scheduler(", "Launcher(", "sync_playwright(")

# The session's Redis Cluster (tests/conftest.py, started on first use): a fixture that names it
# starts redis-server processes.
CLUSTER_FIXTURE = "redis_cluster_url"

TESTS_DIR = Path(__file__).resolve().parent


def starts_processes(source: str) -> bool:
    return any(call in source for call in PROCESS_CALLS)


def _fixture_name(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The fixture's name if `node` is decorated with pytest.fixture (bare or called)."""
    for deco in node.decorator_list:
        call = deco if isinstance(deco, ast.Call) else None
        target = call.func if call is not None else deco
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name != "fixture":
            continue
        for kw in call.keywords if call is not None else ():
            if kw.arg == "name" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                return kw.value.value
        return node.name
    return None


def process_fixtures(files: Iterable[Path] | None = None) -> dict[str, str]:
    """Fixture name -> where it is defined, for every fixture that starts a process.

    Directly (its body holds a PROCESS_CALLS fragment) or through a fixture it requests that
    does (followed to a fixed point). Names are global: a fixture of the same name defined
    elsewhere without a process is still counted, which errs towards e2e.
    """
    defs: list[tuple[str, set[str], bool, str]] = []
    for path in sorted(files if files is not None else TESTS_DIR.rglob("*.py")):
        text = path.read_text(errors="replace")
        for node in ast.walk(ast.parse(text, str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            name = _fixture_name(node)
            if name is None:
                continue
            params = {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
            body = ast.get_source_segment(text, node) or ""
            # A fixture naming the cluster fixture (requesting it, even through getfixturevalue)
            # starts the session's Redis Cluster on first use.
            direct = starts_processes(body) or CLUSTER_FIXTURE in body
            defs.append((name, params, direct, f"{path}:{node.lineno}"))
    found = {name: where for name, _, direct, where in defs if direct}
    grew = True
    while grew:
        grew = False
        for name, params, _, where in defs:
            if name not in found and params & found.keys():
                found[name] = where
                grew = True
    return found


def engine_reason(params: Mapping[str, object], fixturenames: Iterable[str] = ()) -> str | None:
    """Why a test is e2e by its Redis engine: it runs on the session's Redis Cluster (redis-server
    processes tests/conftest.py starts on first use), as `redis_engine[cluster]` or through
    `redis_cluster_url`."""
    if params.get("redis_engine") == "cluster":
        return "runs on the Redis Cluster engine (redis-server processes)"
    if CLUSTER_FIXTURE in fixturenames:
        return f"uses the Redis Cluster ({CLUSTER_FIXTURE}: redis-server processes)"
    return None


def e2e_reason(path: Path, fixturenames: Iterable[str], module_source: str,
               fixtures: dict[str, str]) -> str | None:
    """Why a test at `path` using `fixturenames` is e2e, or None if it runs in-process only."""
    try:
        parts = path.resolve().relative_to(TESTS_DIR).parts
    except ValueError:
        parts = path.parts
    in_dir = E2E_DIRS.intersection(parts[:-1])
    if in_dir:
        return f"under tests/{sorted(in_dir)[0]}/"
    used = sorted(set(fixturenames) & fixtures.keys())
    if used:
        return f"uses process fixture {used[0]!r} ({fixtures[used[0]]})"
    if starts_processes(module_source):
        return "its module starts processes"
    return None
