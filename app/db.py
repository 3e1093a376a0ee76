"""PostgreSQL through Tortoise ORM (asyncpg underneath): config, lifecycle, migrations."""

from __future__ import annotations

import logging
from typing import Any

from sanic import Sanic
from tortoise import Tortoise, connections

from models import MODEL_MODULES

log = logging.getLogger("chat.db")


def tortoise_config(database_url: str, pool_max: int = 10) -> dict[str, Any]:
    """The Tortoise config for one PostgreSQL URL; migrations live in models/migrations."""
    url = database_url.replace("postgresql://", "postgres://", 1)
    sep = "&" if "?" in url else "?"
    if "maxsize=" not in url:
        url = f"{url}{sep}minsize=1&maxsize={pool_max}"
    return {
        "connections": {"default": url},
        "apps": {"models": {"models": MODEL_MODULES, "migrations": "models.migrations",
                            "default_connection": "default"}},
        "use_tz": True,
        "timezone": "UTC",
    }


async def init_db(database_url: str, pool_max: int = 10) -> None:
    # Global fallback: Sanic opens the pool in a listener task while requests run in
    # other tasks; without it Tortoise 1.x's context-local connections are invisible there.
    await Tortoise.init(config=tortoise_config(database_url, pool_max), _enable_global_fallback=True)


async def close_db() -> None:
    # Tortoise.close_connections also clears the global-fallback context; without that a
    # second init_db in the same process (the next test) fails with ConfigurationError.
    await Tortoise.close_connections()


async def migrate(database_url: str) -> None:
    """Apply every committed migration (idempotent)."""
    from tortoise.migrations.api import migrate as run_migrations

    await run_migrations(config=tortoise_config(database_url, 2))
    await connections.close_all()


def raw_pool() -> Any:
    """The asyncpg pool behind Tortoise, for bulk statements (COPY) the ORM cannot express."""
    client = connections.get("default")
    return client._pool  # noqa: SLF001 - Tortoise exposes no public accessor


async def ping_db() -> None:
    await connections.get("default").execute_query("SELECT 1")


def setup_db(app: Sanic) -> None:
    """Open Tortoise before the server starts, close it after it stops."""

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        s = app.ctx.settings
        await init_db(s.database_url, s.db_pool_max)

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        await close_db()
