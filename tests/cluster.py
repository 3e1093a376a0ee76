"""A real 3-master Redis Cluster for the tests, on free loopback ports (a support module).

`RedisClusterNodes.start()` runs three `redis-server --cluster-enabled yes` children (Proc:
own process group, PR_SET_PDEATHSIG, so they die with the pytest process even when it is
SIGKILLed), joins them with `redis-cli --cluster create ... --cluster-replicas 0`, and returns
once every node says `cluster_state:ok` and knows all three masters. `stop()` stops them by
PID and removes their directory. tests/conftest.py starts one lazily, once per session, only
when a test asks for the cluster engine; TEST_REDIS_CLUSTER_URL (any one node) names an
external cluster to use instead, which is then only cleaned, never stopped.

Nothing persists: `--save "" --appendonly no`, and nodes.conf lives in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from urllib.parse import urlsplit

import redis as redis_sync

from tests.support import Proc, free_port

SLOTS = 16384
# How long the nodes get to agree (gossip over the bus) once `--cluster create` returned.
READY_TIMEOUT_S = 30.0


def tools_missing() -> list[str]:
    """Which of redis-server / redis-cli are not on PATH (the cluster cannot start without both)."""
    return [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]


def server_major() -> int:
    """redis-server's major version (`Redis server v=7.0.15 ...`); 0 if unreadable."""
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    for word in out.split():
        if word.startswith("v="):
            try:
                return int(word[2:].split(".")[0])
            except ValueError:
                return 0
    return 0


def _node(host: str, port: int) -> redis_sync.Redis:
    return redis_sync.Redis(host=host, port=port, socket_connect_timeout=2, socket_timeout=5,
                            decode_responses=True)


def primaries(url: str) -> list[tuple[str, int]]:
    """(host, port) of every master serving slots, as the node at `url` sees the cluster."""
    parts = urlsplit(url)
    with _node(parts.hostname or "127.0.0.1", parts.port or 6379) as node:
        found = []
        # redis-py parses CLUSTER NODES into {"ip:port": {"flags": "myself,master", "slots": [...]}}
        for addr, info in node.execute_command("CLUSTER NODES").items():
            flags = info["flags"].split(",")
            if "master" not in flags or "fail" in flags or not info["slots"]:
                continue
            host, _, port = addr.rpartition(":")
            found.append((host or "127.0.0.1", int(port)))
        return sorted(found)


def clear_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with `prefix` on every primary of the cluster at `url`; how many.

    SCAN sees only the node it runs on, and a DEL of several keys in different slots is a
    CROSSSLOT error even on one node: so each primary is scanned and its keys unlinked one
    per command (pipelined, not a transaction).
    """
    removed = 0
    for host, port in primaries(url):
        with _node(host, port) as node:
            batch = list(node.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(batch), 500):
                pipe = node.pipeline(transaction=False)
                for key in batch[i:i + 500]:
                    pipe.unlink(key)
                removed += sum(pipe.execute())
    return removed


def _info(host: str, port: int) -> dict[str, str]:
    try:
        with _node(host, port) as node:
            info = node.execute_command("CLUSTER INFO")  # parsed by redis-py into a dict
    except redis_sync.RedisError:
        return {}
    return {str(k): str(v) for k, v in info.items()}


def cluster_ok(url: str, masters: int = 3) -> bool:
    """Every primary says cluster_state:ok, all slots assigned, and knows `masters` masters."""
    try:
        nodes = primaries(url)
    except redis_sync.RedisError:
        return False
    if len(nodes) < masters:
        return False
    for host, port in nodes:
        info = _info(host, port)
        if (info.get("cluster_state") != "ok" or info.get("cluster_slots_assigned") != str(SLOTS)
                or int(info.get("cluster_size", 0)) < masters):
            return False
    return True


class RedisNodeProc(Proc):
    """One `redis-server --cluster-enabled yes` on loopback; ready once it answers PING."""

    def __init__(self, name: str, port: int, bus_port: int, data_dir: str) -> None:
        self.port = port
        os.makedirs(data_dir, exist_ok=True)
        # --dir is the working directory: nodes.conf (relative) lands there, never in the repo.
        super().__init__(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                                "--dir", data_dir, "--save", "", "--appendonly", "no",
                                "--protected-mode", "no"], {})

    def is_ready(self) -> bool:
        try:
            with _node("127.0.0.1", self.port) as node:
                return bool(node.ping())
        except redis_sync.RedisError:
            return False


class RedisClusterNodes:
    """Three masters on free loopback ports, in a temporary directory; `url` names the first."""

    def __init__(self, tag: str, masters: int = 3) -> None:
        self.tag = tag
        self.masters = masters
        self.dir = ""
        self.nodes: list[RedisNodeProc] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self, attempts: int = 3) -> "RedisClusterNodes":
        """Start the cluster; a port taken between free_port() and the bind is retried on new ports."""
        missing = tools_missing()
        if missing:
            raise RuntimeError(f"cannot start a Redis Cluster: {', '.join(missing)} not found on PATH "
                               "(Debian: apt-get install redis-server; redis-cli comes with redis-tools)")
        if server_major() < 7:  # --cluster-port (a bus port of our choosing) is Redis 7's
            raise RuntimeError("the Redis Cluster tests need redis-server >= 7 (--cluster-port)")
        for attempt in range(attempts):
            try:
                return self._start()
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        return self

    def _start(self) -> "RedisClusterNodes":
        self.dir = tempfile.mkdtemp(prefix=f"chat-test-cluster-{self.tag}-")
        try:
            taken: set[int] = set()
            for i in range(self.masters):
                port, bus = self._two_free_ports(taken)
                self.nodes.append(RedisNodeProc(f"redis-cluster-{self.tag}-{i}", port, bus,
                                                os.path.join(self.dir, str(port))))
            for node in self.nodes:
                node.wait_ready(15)
            # A Proc too (dies with us), though it only runs for a second or two.
            create = Proc(f"redis-cluster-create-{self.tag}",
                          ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                           "--cluster-replicas", "0", "--cluster-yes"], {})
            code = create.wait_exit(60)
            create.stop(2)
            if code != 0:
                raise RuntimeError(f"redis-cli --cluster create failed ({code}):\n{create.log_tail(30)}")
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not all(cluster_ok(f"redis://127.0.0.1:{p}", self.masters) for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster on {self.ports} did not reach cluster_state:ok in "
                                       f"{READY_TIMEOUT_S}s: {[_info('127.0.0.1', p) for p in self.ports]}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _two_free_ports(taken: set[int]) -> tuple[int, int]:
        """A client port and a cluster-bus port, free now and distinct from the ones already picked."""
        picked: list[int] = []
        while len(picked) < 2:
            port = free_port()
            if port not in taken:
                taken.add(port)
                picked.append(port)
        return picked[0], picked[1]

    def stop(self) -> None:
        """Stop every node by PID (SIGTERM, then SIGKILL to its group) and remove the directory."""
        for node in self.nodes:
            node.stop(5)
        self.nodes = []
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> "RedisClusterNodes":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
