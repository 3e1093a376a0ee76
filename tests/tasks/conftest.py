"""Fixtures of the worker tests: the asyncpg pool behind Tortoise, in the test's loop."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
async def pool(db: None) -> Any:
    from app.db import ping_db, raw_pool

    await ping_db()
    return raw_pool()
