"""Fixtures shared by the service tests of tests/app (the lifecycle, read-marker, overlay and
changes-flush tests build on one fresh room each)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from app import rooms
from app.resources import Resources
from app.store.keys import Keys
from tests.app.test_messages import new_room, new_user


@pytest.fixture
async def res(resources: Resources, db: None) -> Resources:
    return resources


@pytest.fixture
async def room(redis: Redis, keys: Keys, db: None) -> tuple[str, str, str]:
    """(room_id, owner_id, member_id) of a fresh public room with one plain member."""
    owner, member = await new_user(), await new_user()
    rid = await new_room(redis, keys, owner)
    await rooms.join_room(redis=redis, keys=keys, room_id=rid, user_id=member)
    return rid, owner, member
