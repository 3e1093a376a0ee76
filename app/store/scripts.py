"""Every Lua script of the project: read from app/store/lua/ once, called one way.

Each `<name>.lua` opens with named locals for its KEYS and ARGV; `lib.lua` holds the
functions several scripts share (stream_top_seq, rate_hit); each script gets the ones it
calls prepended, since Redis scripts cannot include one another. `SCRIPTS` is read at import (immutable: the
sources and their SHA1s); `register` loads them all into a Redis at start-up (server and
worker), and a call runs EVALSHA, loading the script again on NOSCRIPT (Redis restarted,
SCRIPT FLUSH). The accept pipeline (app/store/cache.py) packs the same EVALSHAs by hand.
On Redis Cluster SCRIPT LOAD goes to every primary (redis-py routes it so), EVALSHA to the
node of its first key: a node that restarted, or got a slot, answers NOSCRIPT and is loaded
again the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).with_name("lua")
LIB = "lib"


@dataclass(frozen=True)
class Script:
    """One Lua script: its name (the file's stem), full source (lib included) and SHA1."""

    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, name: str, source: str) -> "Script":
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())

    async def __call__(self, redis: Redis, keys: list[str], args: list[Any]) -> Any:
        """Run it by SHA1; loaded again when Redis does not know it."""
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Pipeline, keys: list[str], args: list[Any]) -> None:
        """Queue an EVALSHA on a pipeline; call `load` on the same Redis first (a pipeline
        cannot retry one command after NOSCRIPT). As a generic command: redis-py's cluster
        pipeline blocks its `evalsha` method, yet routes EVALSHA by its keys like any command."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    async def load(self, redis: Redis) -> None:
        await redis.script_load(self.source)


def _lib_functions(lib: str) -> dict[str, str]:
    """lib.lua's functions by name, each with the comment block above it."""
    starts = [m for m in re.finditer(r"(?m)^(?:--.*\n)*local function (\w+)\(", lib)]
    ends = [m.start() for m in starts[1:]] + [len(lib)]
    return {m.group(1): lib[m.start():end].rstrip() + "\n" for m, end in zip(starts, ends)}


def _read_all(folder: Path = LUA_DIR) -> Mapping[str, Script]:
    # Only the functions a script calls are prepended: Lua builds a closure for each `local
    # function` on every run, and the accept script runs once per message.
    lib = _lib_functions((folder / f"{LIB}.lua").read_text())
    out = {}
    for path in sorted(folder.glob("*.lua")):
        if path.stem != LIB:
            body = path.read_text()
            used = "".join(text for name, text in lib.items() if re.search(rf"\b{name}\(", body))
            out[path.stem] = Script.of(path.stem, used + body)
    return MappingProxyType(out)


SCRIPTS: Mapping[str, Script] = _read_all()

ACCEPT = SCRIPTS["accept"]
FORGET_CID = SCRIPTS["forget_cid"]
SEED = SCRIPTS["seed"]
READ = SCRIPTS["read"]
RATE_HIT = SCRIPTS["rate_hit"]
MEMBER_NEXT_VERSION = SCRIPTS["member_next_version"]
MEMBER_SNAPSHOT_VERSION = SCRIPTS["member_snapshot_version"]
MEMBER_APPLY = SCRIPTS["member_apply"]
MEMBER_LOAD = SCRIPTS["member_load"]
MEMBER_ADD_AT = SCRIPTS["member_add_at"]
MEMBER_FIX = SCRIPTS["member_fix"]
FLUSH_COMMIT = SCRIPTS["flush_commit"]
FLUSH_LEASE = SCRIPTS["flush_lease"]
FLUSH_RELEASE = SCRIPTS["flush_release"]
RESEQ = SCRIPTS["reseq"]
RAISE_SEQ = SCRIPTS["raise_seq"]
CHANGE = SCRIPTS["change"]
SEED_VERSION = SCRIPTS["seed_version"]
CHANGES_COMMIT = SCRIPTS["changes_commit"]
READS_COMMIT = SCRIPTS["reads_commit"]
MARKERS_READ = SCRIPTS["markers_read"]  # app/flush/changes.flush_markers
CHANGES_READ = SCRIPTS["changes_read"]  # app/messages.changes_since
MARK_READ = SCRIPTS["mark_read"]  # app/store/reads.py
READ_STATE = SCRIPTS["read_state"]


async def register(redis: Any) -> None:
    """SCRIPT LOAD every script, in one pipelined round trip (at server and worker start-up).
    On a cluster, on every primary (a pipeline there cannot hold a command for several nodes)."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # a cold cluster client must not start with concurrent calls (client.py)
        await asyncio.gather(*(redis.script_load(script.source) for script in SCRIPTS.values()))
        return
    async with redis.pipeline(transaction=False) as pipe:
        for script in SCRIPTS.values():
            pipe.script_load(script.source)
        await pipe.execute()
