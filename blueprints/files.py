"""files routes: streamed upload into a room, member-only downloads (bytes, thumbnail, meta)."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, ResponseStream, empty, file_stream, json

from app import files, rooms
from app.upload import images, names
from app.store import ratelimit
from app.body_limits import upload_body_cap
from app.errors import PayloadTooLarge, RateLimited
from app.schemas import FileMetaOut, UploadForm, file_meta_out
from blueprints.deps import BINARY, authenticated, doc
from blueprints.file_links import signed_or_authenticated

bp = Blueprint("files")

CHUNK = 64 * 1024
INLINE_TYPES = frozenset(images.PILLOW_FORMATS)  # raster images only; never SVG or HTML

_E401 = (401, "invalid_token")
_E404 = (404, "file_not_found (also: not a member of the file's room, malformed id)")
_BYTES = (200, BINARY, "the bytes, with the sniffed Content-Type and nosniff")
_DOWNLOAD_ERRORS = [_E401, _E404, (409, "file_not_ready: still processing"), (410, "file_expired")]


@bp.post("/rooms/<room_id:str>/files", stream=True)
@doc("Upload a file or image into a room (202; checked and converted in the background)",
     (202, FileMetaOut, "the file, status processing"), (200, FileMetaOut, "the first upload of a retried client_id"),
     errors=[(400, "malformed multipart body"), _E401, (403, "not_member (public room)"), (404, "room_not_found"),
             (413, "payload_too_large: the file is over the limit"),
             (429, "rate_limited: RATE_UPLOADS per RATE_UPLOADS_WINDOW_S (Retry-After)"),
             (415, "unsupported_media_type: not multipart, or the first bytes show a disallowed type"),
             (422, "validation_failed: no file, empty file, body or client_id invalid")],
     body=UploadForm, form=True, tag="files")
@authenticated
async def upload(request: Request, room_id: str) -> HTTPResponse:
    """Multipart `file` (+ `body`, `client_id`): 202 with the file, status processing."""
    settings = request.app.ctx.settings
    # Before PostgreSQL and before a byte of the body: the uploader's budget, then the declared size.
    wait = await ratelimit.hit(request.app.ctx.redis, request.app.ctx.keys.rate("uploads", request.ctx.user_id),
                               settings.rate_uploads, settings.rate_uploads_window_s)
    if wait:
        raise RateLimited(wait, "Too many uploads; slow down.")
    try:
        length: int | None = int(request.headers.get("content-length", ""))
    except ValueError:
        length = None
    if length is not None and length > upload_body_cap(settings):
        raise PayloadTooLarge(f"The file is larger than {settings.max_upload_bytes} bytes.",
                              details={"max_bytes": settings.max_upload_bytes})
    # Membership next: nobody else gets a byte of their body read. Any refusal with the body
    # unread is answered, and the rest is read away (app/door.py) so the client sees it.
    room = await rooms.require_member(room_id=room_id, user_id=request.ctx.user_id)
    meta, created = await files.upload(
        settings=settings, producer=request.app.ctx.resources.jobs, room_id=str(room.id), uploader_id=request.ctx.user_id,
        content_type=request.headers.get("content-type", ""), content_length=length,
        chunks=_body(request))
    return json(meta, status=202 if created else 200)


async def _body(request: Request) -> Any:
    while (chunk := await request.stream.read()) is not None:  # type: ignore[union-attr]
        yield chunk


@bp.get("/files/<file_id:str>")
@doc("Download a file (members of its room; attachment unless a raster image)", _BYTES, errors=_DOWNLOAD_ERRORS,
     tag="files")
@signed_or_authenticated("file")
async def download(request: Request, file_id: str) -> HTTPResponse | ResponseStream:
    """The stored bytes (409 while processing, 404 when rejected, 410 once expired)."""
    return await _send(request, file_id, thumbnail=False)


@bp.get("/files/<file_id:str>/thumbnail")
@doc("A small image of an image file", _BYTES, errors=_DOWNLOAD_ERRORS, tag="files")
@signed_or_authenticated("thumbnail")
async def thumbnail(request: Request, file_id: str) -> HTTPResponse | ResponseStream:
    """A small image of an image file."""
    return await _send(request, file_id, thumbnail=True)


@bp.get("/files/<file_id:str>/meta")
@doc("The file object with its status and rejection reason", (200, FileMetaOut, "the file"),
     errors=[_E401, _E404], tag="files")
@authenticated
async def meta(request: Request, file_id: str) -> HTTPResponse:
    """The file object with its status (and the reason of a rejection)."""
    f = await files.for_member(file_id=file_id, user_id=request.ctx.user_id)
    return json(file_meta_out(f, viewer_id=request.ctx.user_id))


async def _send(request: Request, file_id: str, *, thumbnail: bool) -> HTTPResponse | ResponseStream:
    f = await files.for_member(file_id=file_id, user_id=request.ctx.user_id)
    path, mime = files.servable(f, request.app.ctx.settings, thumbnail=thumbnail)
    etag = f'"{f.id}{"-thumb" if thumbnail else ""}"'  # stored bytes never change once ready
    headers = {
        "ETag": etag,
        # Revalidate every time: membership is checked on each request, the 304 is cheap.
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if _matches(request.headers.get("if-none-match"), etag):
        return empty(status=304, headers=headers)
    inline = mime in INLINE_TYPES
    name = f.name
    if thumbnail:
        stem = name.rsplit(".", 1)[0] if "." in name else name
        name = f"{stem}-thumbnail{path.suffix}"
    headers["Content-Disposition"] = names.content_disposition("inline" if inline else "attachment", name)
    headers["Content-Length"] = str(path.stat().st_size)
    return await file_stream(path, chunk_size=CHUNK, mime_type=mime, headers=headers)


def _matches(header: str | None, etag: str) -> bool:
    """If-None-Match: `*` or any listed tag (weak comparison, as RFC 9110 asks for GET)."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags
