"""Operator commands: `python -m app.cli <command>`.

  migrate          apply committed database migrations
  makemigrations   write a new migration from model changes (developers)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Callable

from app.settings import Settings

COMMANDS: dict[str, tuple[str, Callable[[Settings, argparse.Namespace], int]]] = {}


def command(name: str, help_text: str) -> Callable:
    def register(fn: Callable[[Settings, argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = (help_text, fn)
        return fn
    return register


@command("migrate", "apply committed database migrations")
def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.db import migrate

    asyncio.run(migrate(settings.database_url))
    print("migrations applied")
    return 0


@command("makemigrations", "write a new migration from model changes")
def _makemigrations(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import subprocess
    import tempfile

    from app.db import tortoise_config

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(tortoise_config(settings.database_url, 2), fh)
    return subprocess.call([sys.executable, "-m", "tortoise", "--config-file", fh.name, "makemigrations"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description="chat server operator commands")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _fn) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load()
    return COMMANDS[args.command][1](settings, args)


if __name__ == "__main__":
    sys.exit(main())
