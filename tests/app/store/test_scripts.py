"""The Lua loader (app/store/scripts.py): every .lua file registered, called by SHA, reloaded on NOSCRIPT."""

from __future__ import annotations

import re
import uuid

from redis.asyncio import Redis

from app.store import scripts
from app.store.scripts import LUA_DIR, Script


def test_every_lua_file_is_a_script_with_named_locals_and_only_the_lib_functions_it_calls() -> None:
    files = {p.stem for p in LUA_DIR.glob("*.lua")} - {scripts.LIB}
    assert set(scripts.SCRIPTS) == files
    for name, script in scripts.SCRIPTS.items():
        body = (LUA_DIR / f"{name}.lua").read_text()
        assert script.source.endswith(body)
        # KEYS[n] / ARGV[n] are read once, into named locals, never in the logic
        code = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        for ln in code:
            if re.search(r"\b(KEYS|ARGV)\[\d+\]", ln):
                assert re.match(r"^local \w+ = (tonumber\()?(KEYS|ARGV)\[\d+\]", ln), (name, ln)
        defined = set(re.findall(r"local function (\w+)\(", script.source))
        assert defined == {f for f in ("rate_hit", "stream_top_seq") if re.search(rf"\b{f}\(", body)}, name


async def test_register_loads_every_script(redis: Redis) -> None:
    await scripts.register(redis)
    assert await redis.script_exists(*(s.sha for s in scripts.SCRIPTS.values())) == [True] * len(scripts.SCRIPTS)


async def test_a_script_redis_does_not_know_is_loaded_and_run(redis: Redis) -> None:
    script = Script.of("test", f"-- {uuid.uuid4()}\nlocal n = tonumber(ARGV[1])\nreturn n * 3")  # never loaded
    assert await redis.script_exists(script.sha) == [False]
    assert await script(redis, [], [7]) == 21
    assert await redis.script_exists(script.sha) == [True]
