"""docker/compose.yml read as Docker Compose would, for tests/stack: the services, their
commands and their environment (env_file, then `environment:` with `${VAR:?msg}` /
`${VAR:-default}` interpolation, over the image's `ENV`), so the stack test starts exactly
what the file says, as local processes.

A support module. It understands the subset of Compose the project's file uses (YAML
anchors and `<<:` merges are PyYAML's); anything it does not understand raises, so a file
that grew a feature this reader ignores fails the test instead of being half-run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.yml"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


class ComposeError(AssertionError):
    """compose.yml (or a file it names) would not start as written."""


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (unset or empty = missing)."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        got = variables.get(name, "")
        if got:
            return got
        if op == ":-":
            return arg or ""
        if op == ":?":
            raise ComposeError(f"compose refuses to start: {name}: {arg}")
        raise ComposeError(f"{name} is not set and has no default")
    out = _VAR.sub(sub, value)
    if "$" in out.replace("$$", ""):
        raise ComposeError(f"interpolation this reader does not know in {value!r}")
    return out.replace("$$", "$")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, `#` comments and blank lines ignored (no quoting in the project's file)."""
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ComposeError(f"{path.name}:{n}: not KEY=VALUE: {line!r}")
        env[key] = value
    return env


def dockerfile_env(path: Path) -> dict[str, str]:
    """The `ENV k=v ...` instructions of a Dockerfile, in order (later ones win)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].upper() == "ENV":
            for item in shlex.split(parts[1]):
                key, sep, value = item.partition("=")
                if not sep:
                    raise ComposeError(f"Dockerfile ENV without '=': {line!r}")
                env[key] = value
    return env


@dataclass
class Service:
    name: str
    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    raw: dict[str, Any] = field(default_factory=dict)


def load(variables: Mapping[str, str], path: Path = COMPOSE) -> dict[str, Service]:
    """Every service of compose.yml with its command and full environment, `variables` standing
    for the shell / docker/.env the file takes its secrets from."""
    doc = yaml.safe_load(path.read_text())
    services: dict[str, Service] = {}
    for name, spec in doc["services"].items():
        env: dict[str, str] = {}
        build = spec.get("build")
        if build:
            env.update(dockerfile_env((path.parent / build["context"] / build["dockerfile"]).resolve()))
        env_files = spec.get("env_file") or []
        for f in [env_files] if isinstance(env_files, str) else env_files:
            env.update(read_env_file(path.parent / f))
        raw_env = spec.get("environment") or {}
        if isinstance(raw_env, list):
            raw_env = dict(item.split("=", 1) for item in raw_env)
        env.update({k: interpolate(str(v), variables) for k, v in raw_env.items()})
        command = spec.get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        replicas = int((spec.get("deploy") or {}).get("replicas", 1))
        services[name] = Service(name, [interpolate(str(c), variables) for c in command], env, replicas, spec)
    return services
