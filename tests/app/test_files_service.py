"""The files service on the real PostgreSQL and Redis: processing verdicts, expiry sweep, purge, orphans."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app import files
from app.schemas import file_out
from app.upload import names
from app.store.keys import Keys
from app.serialize import utcnow
from app.resources import Resources
from app.settings import Settings
from models.file import File
from models.room import Room
from models.user import User
from tests import samples


@pytest.fixture
def media_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(media_root=str(tmp_path))


@pytest.fixture
async def owner_room(db: None) -> tuple[User, Room]:
    name = f"f{uuid.uuid4().hex[:12]}"
    user = await User.create(username=name, username_lower=name, display_name=name, password_hash="x")
    room = await Room.create(name="files", owner=user)
    return user, room


async def _stored(s: Settings, owner_room: tuple[User, Room], *, status: str = "ready", kind: str = "png",
                  age_days: float = 0, expires_in: timedelta | None = None) -> File:
    """A file row with real bytes where the row says they are."""
    user, room = owner_room
    fid = str(uuid.uuid4())
    created = utcnow() - timedelta(days=age_days)
    rel = names.final_rel(fid, f".{kind}", created)
    thumb = names.final_rel(fid, ".jpg", created, ".thumb") if kind == "png" else None
    for r in filter(None, (rel, thumb)):
        path = Path(s.media_root) / r
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(samples.plain_png())
    f = await File.create(id=fid, room=room, uploader=user, name=f"x.{kind}", mime="image/png", size=10,
                          status=status, storage_path=rel, thumbnail_path=thumb,
                          expires_at=utcnow() + expires_in if expires_in is not None else None)
    await File.filter(id=fid).update(created_at=created)  # auto_now_add ignores a given value
    return await File.get(id=fid)


async def test_sweep_expires_in_batches_and_deletes_bytes(media_settings: Settings, owner_room: Any) -> None:
    old = [await _stored(media_settings, owner_room, expires_in=timedelta(seconds=-5)) for _ in range(5)]
    fresh = await _stored(media_settings, owner_room, expires_in=timedelta(days=1))
    assert await files.sweep_expired(settings=media_settings, batch=2) == 5
    for f in old:
        row = await File.get(id=f.id)
        assert row.status == "expired" and row.expired is True
        assert file_out(row)["expired"] is True
        assert not (Path(media_settings.media_root) / f.storage_path).exists()
        assert not (Path(media_settings.media_root) / f.thumbnail_path).exists()
    assert (await File.get(id=fresh.id)).status == "ready"
    assert (Path(media_settings.media_root) / fresh.storage_path).exists()
    assert await files.sweep_expired(settings=media_settings) == 0


async def test_purge_deletes_rows_and_bytes_before_the_cutoff(media_settings: Settings, owner_room: Any) -> None:
    old = [await _stored(media_settings, owner_room, age_days=40) for _ in range(3)]
    new = await _stored(media_settings, owner_room, age_days=1)
    n = await files.purge_files_before(settings=media_settings, cutoff=utcnow() - timedelta(days=30), batch=2)
    assert n == 3
    assert not await File.filter(id__in=[f.id for f in old]).exists()
    assert not any((Path(media_settings.media_root) / f.storage_path).exists() for f in old)
    assert await File.filter(id=new.id).exists()


async def test_sweep_removes_orphaned_bytes_only(media_settings: Settings, owner_room: Any) -> None:
    root = Path(media_settings.media_root)
    (root / "incoming").mkdir(parents=True, exist_ok=True)
    stray, waiting = root / "incoming" / str(uuid.uuid4()), await _stored(media_settings, owner_room, status="processing")
    pending = root / "incoming" / str(waiting.id)
    for p in (stray, pending, root / "incoming" / "junk"):
        p.write_bytes(b"x")
        past = time.time() - 3 * 86400
        os.utime(p, (past, past))
    await File.filter(id=waiting.id).update(created_at=utcnow())  # not stale: its job may still run
    # A deleted room's files: no row any more, in a day folder older than any TTL.
    gone = await _stored(media_settings, owner_room, age_days=31)
    await File.filter(id=gone.id).delete()
    kept = await _stored(media_settings, owner_room, age_days=30, expires_in=timedelta(days=1))  # still ready
    await files.sweep_expired(settings=media_settings)
    assert not stray.exists() and not (root / "incoming" / "junk").exists()
    assert pending.exists()
    assert not (root / gone.storage_path).exists()
    assert (root / kept.storage_path).exists()


async def test_stale_processing_rows_are_given_up(media_settings: Settings, owner_room: Any) -> None:
    f = await _stored(media_settings, owner_room, status="processing", age_days=2)
    await files.sweep_expired(settings=media_settings)
    row = await File.get(id=f.id)
    assert row.status == "rejected" and row.reason and row.storage_path is None


async def test_process_rejects_bad_input_and_tells_the_uploader(media_settings: Settings, owner_room: Any,
                                                                redis: Redis, keys: Keys) -> None:
    user, room = owner_room
    fid = str(uuid.uuid4())
    incoming = Path(media_settings.media_root) / names.incoming_rel(fid)
    incoming.parent.mkdir(parents=True, exist_ok=True)
    incoming.write_bytes(samples.bomb_png(30000))
    await File.create(id=fid, room=room, uploader=user, name="bomb.png", claimed_mime="image/png",
                      size=incoming.stat().st_size, storage_path=names.incoming_rel(fid))
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events_channel())
    try:
        outcome = await files.process(Resources.build(media_settings, redis, keys), file_id=fid)
        assert outcome == "rejected"
        frame = None
        for _ in range(50):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg and msg["data"].startswith(f"u:{user.id}|"):
                frame = json.loads(msg["data"].split("|", 2)[2])
                break
        assert frame is not None and frame["type"] == "file_status"
        assert frame["file"]["id"] == fid and frame["file"]["status"] == "rejected" and "pixels" in frame["file"]["reason"]
    finally:
        await pubsub.aclose()
    row = await File.get(id=fid)
    assert row.status == "rejected" and not incoming.exists()
    # Idempotent: a second delivery of the same job does nothing.
    assert await files.process(Resources.build(media_settings, redis, keys), file_id=fid) == "skipped"
    assert await files.process(Resources.build(media_settings, redis, keys), file_id="nope") == "missing"
    assert await files.process(Resources.build(media_settings, redis, keys), file_id=str(uuid.uuid4())) == "skipped"


async def test_missing_upload_bytes_become_a_rejection(media_settings: Settings, owner_room: Any,
                                                       redis: Redis, keys: Keys) -> None:
    user, room = owner_room
    f = await File.create(room=room, uploader=user, name="a.txt", storage_path="incoming/x")
    assert await files.process(Resources.build(media_settings, redis, keys), file_id=str(f.id)) == "rejected"
    assert "missing" in (await File.get(id=f.id)).reason
    await asyncio.sleep(0)
