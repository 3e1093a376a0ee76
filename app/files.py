"""Files and images: upload bookkeeping, processing, downloads, expiry.

The API's file objects are rendered by app/schemas.py (file_out, file_meta_out).
Bytes live under MEDIA_ROOT (see app/upload/names.py for the layout); rows in models/file.py.
Life of a file: processing (bytes in incoming/) -> ready (re-encoded copy in a per-day
folder, a message in the room) | rejected (bytes deleted) -> expired (bytes deleted).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator

from redis.asyncio import Redis

from app.realtime import events
from app import jobs, messages
from app.rooms import role_in
from app.upload import Rejected, images, multipart, names, sniff
from app.errors import (ChatError, FileExpired, FileNotFound, FileNotReady, PayloadTooLarge,
                        ServiceUnavailable, ValidationFailed)
from app.resources import Resources
from app.store.keys import Keys
from app.serialize import utcnow
from app.ids import canonical_uuid, parse_uuid
from app.schemas import file_meta_out, file_out
from app.settings import Settings
from models.file import File

log = logging.getLogger("chat.files")

PROCESS_ACTOR = "process_upload"
STALE_PROCESSING = timedelta(days=1)  # a job this old was lost: give up on it in the sweep
ORPHAN_GRACE = timedelta(days=2)  # stray bytes older than this (beyond any TTL) are removed


# -- upload ------------------------------------------------------------------------

async def upload(*, settings: Settings, producer: jobs.Producer, room_id: str, uploader_id: str, content_type: str,
                 content_length: int | None, chunks: AsyncIterator[bytes]) -> tuple[dict[str, Any], bool]:
    """Receive a member's upload, record it and queue its processing; (meta, created).

    The caller has checked membership before reading a byte. A retried `client_id`
    returns the first upload's file (created=False) and keeps no second copy.
    """
    if content_length is not None and content_length > settings.max_upload_bytes + multipart.MAX_FIELDS_BYTES:
        raise PayloadTooLarge(f"The file is larger than {settings.max_upload_bytes} bytes.",
                              details={"max_bytes": settings.max_upload_bytes})
    file_id = str(uuid.uuid4())
    incoming = names.media_path(settings.media_root, names.incoming_rel(file_id))
    got = await multipart.receive(chunks, content_type=content_type, dest=incoming,
                                max_bytes=settings.max_upload_bytes, allowed_mime=settings.allowed_mime)
    try:
        body = got.fields.get("body", "")
        client_id = got.fields.get("client_id") or None
        messages.validate_send(settings, kind="file", body=body, client_id=client_id)
        # PostgreSQL refuses NUL in text: a 422 here, not a 500 at the insert.
        bad = {k: "must not contain NUL characters" for k, v in (("body", body), ("client_id", client_id))
               if v and "\x00" in v}
        if bad:
            raise ValidationFailed(bad)
        if client_id is not None:
            first = await File.filter(room_id=room_id, uploader_id=uploader_id, client_id=client_id).first()
            if first is not None:
                incoming.unlink(missing_ok=True)
                return file_meta_out(first, viewer_id=uploader_id), False
        f = await File.create(
            id=file_id, room_id=room_id, uploader_id=uploader_id, name=names.display_name(got.filename),
            mime=got.prefix_mime if got.prefix_mime in settings.allowed_mime else None,
            claimed_mime=_printable(got.claimed_mime), size=got.size, status="processing",
            storage_path=names.incoming_rel(file_id), body=body, client_id=client_id)
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    try:
        await producer.enqueue(PROCESS_ACTOR, file_id)
    except Exception as exc:  # noqa: BLE001 - without the job the upload would wait forever
        log.error("could not queue processing of file %s: %s", file_id, exc)
        incoming.unlink(missing_ok=True)
        await f.delete()
        raise ServiceUnavailable("The file processing queue is unavailable.") from None
    return file_meta_out(f, viewer_id=uploader_id), True


def _printable(value: str | None) -> str | None:
    """The client's claimed type, kept for the mismatch check only (never served)."""
    if not value:
        return None
    return "".join(c for c in value if c.isprintable())[:128] or None


# -- download ----------------------------------------------------------------------

async def for_member(*, file_id: str, user_id: str) -> File:
    """The file when the user is a member of its room; 404 file_not_found otherwise (no leak)."""
    fid = parse_uuid(file_id, FileNotFound)
    f = await File.get_or_none(id=fid)
    if f is None or await role_in(str(f.room_id), user_id) is None:
        raise FileNotFound()
    return f


def servable(f: File, settings: Settings, *, thumbnail: bool = False) -> tuple[Path, str]:
    """(path, Content-Type) of the bytes to send, or 409 / 404 / 410 by the file's state."""
    if f.status == "processing":
        raise FileNotReady()
    if f.status == "rejected":
        raise FileNotFound()
    if f.expired or f.status == "expired" or (f.expires_at is not None and f.expires_at <= utcnow()):
        raise FileExpired()
    rel = f.thumbnail_path if thumbnail else f.storage_path
    if not rel:
        raise FileNotFound("This file has no thumbnail." if thumbnail else None)
    path = names.media_path(settings.media_root, rel)
    if not path.is_file():
        log.warning("bytes of file %s are missing (%s)", f.id, rel)
        raise FileNotFound()
    mime = images.THUMB_TYPES.get(path.suffix, "application/octet-stream") if thumbnail else f.mime
    return path, mime or "application/octet-stream"


# -- processing (the process_upload actor) -------------------------------------------

async def process(res: Resources, *, file_id: str) -> str:
    """Sniff, check and convert one upload, then post its message; idempotent. Returns the outcome.

    Bad input never raises: it becomes a rejection the uploader is told about. Only
    infrastructure failures (Redis, PostgreSQL) raise, so the job is retried; the
    row stays `processing` until then and a retry redoes the work from incoming/.
    """
    redis, keys, settings = res.redis, res.keys, res.settings
    fid = canonical_uuid(file_id)
    if fid is None:
        return "missing"
    f = await File.get_or_none(id=fid)
    if f is None or f.status != "processing":
        return "skipped"
    try:
        await asyncio.to_thread(_convert, settings, f)
    except Rejected as exc:
        return await _reject(redis, keys, settings, f, str(exc))
    except Exception:  # noqa: BLE001 - whatever broke, the input is refused, the worker lives on
        log.exception("processing file %s failed", fid)
        return await _reject(redis, keys, settings, f, "The file could not be processed.")
    kind = "image" if f.mime in images.PILLOW_FORMATS else "file"
    ttl = settings.image_ttl_days if kind == "image" else settings.file_ttl_days
    f.expires_at = utcnow() + timedelta(days=ttl)
    await f.save(update_fields=["mime", "size", "name", "storage_path", "thumbnail_path", "expires_at"])
    if f.uploader_id is None:
        return await _reject(redis, keys, settings, f, "The uploader no longer exists.")
    try:
        # Without a client_id of the uploader's, the file's own id keeps a retried job
        # from posting the message twice.
        message, created = await messages.accept_message(
            res, room_id=str(f.room_id), sender_id=str(f.uploader_id),
            body=f.body, kind=kind, file=file_out(f), client_id=f.client_id or f"file-{fid}",
            rate_limit=False)
    except ChatError as exc:
        if exc.status >= 500:
            raise
        return await _reject(redis, keys, settings, f, f"The message could not be posted: {exc.message}")
    if not created and (message.get("file") or {}).get("id") != fid:
        return await _reject(redis, keys, settings, f, "This client_id was already used for another message.")
    f.status, f.message_seq = "ready", int(message["seq"])
    await f.save(update_fields=["status", "message_seq"])
    names.remove(settings.media_root, names.incoming_rel(fid))
    await _notify(redis, keys, f)
    return "ready"


def _convert(settings: Settings, f: File) -> None:
    """Blocking part (a thread): sniff the whole upload, check it, write the stored copy."""
    fid = str(f.id)
    src = names.media_path(settings.media_root, names.incoming_rel(fid))
    if not src.is_file():
        raise Rejected("The uploaded bytes are missing.")
    sniffed = sniff.sniff_file(src)
    sniff.check_type(sniffed, f.name, f.claimed_mime, settings.allowed_mime)
    ext = sniff.TYPES[sniffed][0]
    when = f.created_at or utcnow()
    rel = names.final_rel(fid, ext, when)
    dst = names.media_path(settings.media_root, rel)
    dst.parent.mkdir(parents=True, exist_ok=True)
    thumb_rel = None
    if sniffed in images.PILLOW_FORMATS:
        conv = images.convert_image(src, dst, dst.with_name(f"{fid}.thumb"), sniffed,
                                   max_pixels=settings.max_image_pixels, thumbnail_px=settings.thumbnail_px)
        size = conv.size
        thumb_rel = names.final_rel(fid, conv.thumb_ext, when, ".thumb")
        # Belt and braces: what we serve must sniff as what we say it is.
        if sniff.sniff_file(dst) != sniffed:
            names.remove(settings.media_root, rel, thumb_rel)
            raise Rejected("The image could not be re-encoded faithfully.")
    else:
        # Non-images are kept byte for byte (they are only ever served as attachments).
        shutil.copyfile(src, dst)
        size = dst.stat().st_size
    f.mime, f.size, f.storage_path, f.thumbnail_path = sniffed, size, rel, thumb_rel
    f.name = names.name_for_type(f.name, sniffed)


async def _reject(redis: Redis, keys: Keys, settings: Settings, f: File, reason: str) -> str:
    """Refuse the upload: bytes gone, reason recorded, the uploader told."""
    names.remove(settings.media_root, names.incoming_rel(str(f.id)), f.storage_path, f.thumbnail_path)
    f.status, f.reason = "rejected", reason[:255]
    f.storage_path = f.thumbnail_path = None
    f.expires_at = None
    await f.save(update_fields=["status", "reason", "storage_path", "thumbnail_path", "expires_at"])
    log.info("file %s rejected: %s", f.id, reason)
    await _notify(redis, keys, f)
    return "rejected"


async def _notify(redis: Redis, keys: Keys, f: File) -> None:
    """`file_status` to the uploader; the row is committed, so a Redis hiccup is only logged."""
    if f.uploader_id is None:
        return
    try:
        await events.to_user(redis, keys, str(f.uploader_id), {"type": "file_status",
                                                                   "file": file_meta_out(f, viewer_id=str(f.uploader_id))})
    except Exception:  # noqa: BLE001
        log.warning("file_status for file %s not published", f.id, exc_info=True)


# -- expiry and pruning (called by the worker's scheduled actors) ---------------------

async def sweep_expired(*, settings: Settings, batch: int = 1000) -> int:
    """Delete the bytes of files past `expires_at` and mark them expired; returns how many.

    Works in bounded batches (one short statement each) so a large backlog never
    holds a long transaction or a huge id list in memory.
    """
    total = 0
    while True:
        rows = await File.filter(status="ready", expires_at__lte=utcnow()).limit(batch).values(
            "id", "storage_path", "thumbnail_path")
        if not rows:
            break
        await asyncio.to_thread(_remove_rows, settings, rows)
        ids = [r["id"] for r in rows]
        total += await File.filter(id__in=ids, status="ready").update(status="expired", expired=True)
        if len(rows) < batch:
            break
    await _give_up_stale(settings, batch)
    await _prune_orphans(settings, batch)
    if total:
        log.info("expired %d file(s)", total)
    return total


async def _give_up_stale(settings: Settings, batch: int) -> None:
    """Uploads whose processing job never ran (lost, or the worker was gone for a day)."""
    cutoff = utcnow() - STALE_PROCESSING
    rows = await File.filter(status="processing", created_at__lt=cutoff).limit(batch).values(
        "id", "storage_path", "thumbnail_path")
    if rows:
        await asyncio.to_thread(_remove_rows, settings, rows)
        await File.filter(id__in=[r["id"] for r in rows], status="processing").update(
            status="rejected", reason="Processing did not finish in time.", storage_path=None,
            thumbnail_path=None)


async def _prune_orphans(settings: Settings, batch: int) -> None:
    """Bytes no row accounts for: uploads cut off by a crash, files of deleted rooms (rows cascade)."""
    old_incoming = await asyncio.to_thread(_old_incoming, settings, batch)
    if old_incoming:
        ids = [n for n in old_incoming if canonical_uuid(n) == n]
        alive = {str(i) for i in await File.filter(id__in=ids, status="processing").values_list("id", flat=True)}
        names.remove(settings.media_root, *(names.incoming_rel(n) for n in old_incoming if n not in alive))
    # A day folder older than the longest TTL holds nothing servable unless a row still says so.
    days = max(settings.image_ttl_days, settings.file_ttl_days) + ORPHAN_GRACE.days
    for day in await asyncio.to_thread(_old_day_folders, settings, utcnow() - timedelta(days=days)):
        if not await File.filter(status="ready", storage_path__startswith=f"{day}/").exists():
            await asyncio.to_thread(shutil.rmtree, names.media_path(settings.media_root, day), True)


def _old_incoming(settings: Settings, batch: int) -> list[str]:
    folder = Path(settings.media_root) / "incoming"
    cutoff = (utcnow() - ORPHAN_GRACE).timestamp()
    if not folder.is_dir():
        return []
    found: list[str] = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                found.append(entry.name)
                if len(found) >= batch:
                    break
    return found


def _old_day_folders(settings: Settings, before: datetime) -> list[str]:
    """`YYYY/MM/DD` folders (relative) of days before `before`."""
    root = Path(settings.media_root)
    limit = before.strftime("%Y/%m/%d")
    out = []
    for day in root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]"):
        rel = day.relative_to(root).as_posix()
        if day.is_dir() and rel < limit:
            out.append(rel)
    return sorted(out)


async def purge_files_before(*, settings: Settings, cutoff: datetime, batch: int = 1000) -> int:
    """Delete the rows and bytes of files created before `cutoff` (retention); returns how many."""
    total = 0
    while True:
        rows = await File.filter(created_at__lt=cutoff).limit(batch).values("id", "storage_path", "thumbnail_path")
        if not rows:
            break
        await asyncio.to_thread(_remove_rows, settings, rows)
        total += await File.filter(id__in=[r["id"] for r in rows]).delete()
        if len(rows) < batch:
            break
    return total


def _remove_rows(settings: Settings, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        names.remove(settings.media_root, names.incoming_rel(str(r["id"])), r["storage_path"], r["thumbnail_path"])
