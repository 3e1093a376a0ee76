"""Retention in-process: prune exactly the messages past RETENTION_DAYS, in chunks, with their files."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from app.flush import flush_room
from app.retention import prune_old_messages, retention_cutoff
from models.file import File
from tests.fill import make_room, push

NOW = datetime.now(timezone.utc).replace(microsecond=0)


async def test_prune_removes_exactly_the_messages_older_than_retention(settings, keys, redis, pool):
    s = settings.replace(retention_days=30, prune_batch_size=40)
    cutoff = retention_cutoff(s, NOW)
    sender, room = await make_room()
    # 130 messages up to 1 ms before the cutoff, then 70 from 1 ms after it (seqs 131..200)
    await push(redis, keys, room, sender, 130, created_at=cutoff - timedelta(milliseconds=130),
               age_step=timedelta(milliseconds=1))
    await push(redis, keys, room, sender, 70, created_at=cutoff + timedelta(milliseconds=1),
               age_step=timedelta(milliseconds=1))
    await flush_room(room, redis=redis, keys=keys, settings=s, pool=pool)

    res = await prune_old_messages(settings=s, pool=pool, now=NOW)

    assert res.cutoff == cutoff
    assert res.messages >= 130 and res.chunks >= 4  # other tests' rooms hold only recent messages
    seqs = [r["seq"] for r in await pool.fetch("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq",
                                               uuid.UUID(room))]
    assert seqs == list(range(131, 201))
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE created_at < $1", cutoff) == 0
    # a second run finds nothing left
    assert (await prune_old_messages(settings=s, pool=pool, now=NOW)).messages == 0


async def test_prune_also_purges_the_files_of_the_period(settings, keys, redis, pool):
    sender, room = await make_room()
    old = await File.create(room_id=room, uploader_id=sender, name="old.txt", status="ready")
    new = await File.create(room_id=room, uploader_id=sender, name="new.txt", status="ready")
    await File.filter(id=old.id).update(created_at=NOW - timedelta(days=31))

    res = await prune_old_messages(settings=settings, pool=pool, now=NOW)

    assert not await File.filter(id=old.id).exists()
    assert await File.filter(id=new.id).exists()
    assert res.files >= 1
