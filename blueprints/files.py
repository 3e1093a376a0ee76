"""files routes: streamed upload into a room, member-only downloads (bytes, thumbnail, meta)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, ResponseStream, empty, file_stream, json
from sanic_ext.extensions.openapi import openapi
from sanic_ext.extensions.openapi.definitions import Component, RequestBody, Response

from app import files, rooms
from app.upload import media
from app.store import ratelimit
from app.door import upload_body_cap
from app.errors import PayloadTooLarge, RateLimited
from app.messages import CLIENT_ID_MAX
from app.validation import STORABLE_PATTERN
from blueprints.deps import ErrorEnvelope, authenticated, body_schema, text_field
from blueprints.messages import DEFAULT_MAX_CHARS, FileOut
from blueprints.file_links import signed_or_authenticated

_STORABLE = text_field(STORABLE_PATTERN)

bp = Blueprint("files")

CHUNK = 64 * 1024
INLINE_TYPES = frozenset(media.PILLOW_FORMATS)  # raster images only; never SVG or HTML


# -- documentation schemas ----------------------------------------------------------

class UploadForm(BaseModel):
    # Form fields are text (or absent): none of them can be null.
    model_config = ConfigDict(json_schema_extra=body_schema)

    file: bytes = Field(min_length=1, description="the file (not empty); its type is sniffed from the bytes "
                        "(MAX_UPLOAD_BYTES, default 10 MiB)")
    body: str = Field(default=None, max_length=DEFAULT_MAX_CHARS,  # type: ignore[assignment]
                      description="text of the file's message (may be empty)", json_schema_extra=_STORABLE)
    client_id: str = Field(default=None, max_length=CLIENT_ID_MAX,  # type: ignore[assignment]
                           description="retry key, as for messages; empty means none", json_schema_extra=_STORABLE)


class FileMetaOut(FileOut):
    """The file object of a message, plus its processing state."""

    room_id: str
    status: Literal["processing", "ready", "rejected", "expired"]
    reason: str | None = Field(description="why it was rejected")
    client_id: str | None
    seq: int | None = Field(description="seq of the file's message once ready")
    created_at: str


def _resp(status: int, text: str, model: type[BaseModel] = ErrorEnvelope) -> Response:
    return Response({"application/json": Component(model)}, status=str(status), description=text)  # type: ignore[arg-type]


_E401 = _resp(401, "invalid_token")
_E404 = _resp(404, "file_not_found (also: not a member of the file's room, malformed id)")
_BYTES = Response({"application/octet-stream": {"type": "string", "format": "binary"}}, status="200",  # type: ignore[arg-type]
                  description="the bytes, with the sniffed Content-Type and nosniff")
_DOWNLOAD_ERRORS = [_E401, _E404, _resp(409, "file_not_ready: still processing"), _resp(410, "file_expired")]


@bp.post("/rooms/<room_id:str>/files", stream=True)
@openapi.definition(
    summary="Upload a file or image into a room (202; checked and converted in the background)", tag="files",
    secured={"bearer": []}, body=RequestBody({"multipart/form-data": Component(UploadForm)}, required=True),
    response=[_resp(202, "the file, status processing", FileMetaOut),
              _resp(200, "the first upload of a retried client_id", FileMetaOut),
              _resp(400, "malformed multipart body"), _E401, _resp(403, "not_member (public room)"),
              _resp(404, "room_not_found"), _resp(413, "payload_too_large: the file is over the limit"),
              _resp(429, "rate_limited: RATE_UPLOADS per RATE_UPLOADS_WINDOW_S (Retry-After)"),
              _resp(415, "unsupported_media_type: not multipart, or the first bytes show a disallowed type"),
              _resp(422, "validation_failed: no file, empty file, body or client_id invalid")])
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
        settings=settings, room_id=str(room.id), uploader_id=request.ctx.user_id,
        content_type=request.headers.get("content-type", ""), content_length=length,
        chunks=_body(request))
    return json(meta, status=202 if created else 200)


async def _body(request: Request) -> Any:
    while (chunk := await request.stream.read()) is not None:  # type: ignore[union-attr]
        yield chunk


@bp.get("/files/<file_id:str>")
@openapi.definition(summary="Download a file (members of its room; attachment unless a raster image)",
                    tag="files", secured={"bearer": []}, response=[_BYTES, *_DOWNLOAD_ERRORS])
@signed_or_authenticated("file")
async def download(request: Request, file_id: str) -> HTTPResponse | ResponseStream:
    """The stored bytes (409 while processing, 404 when rejected, 410 once expired)."""
    return await _send(request, file_id, thumbnail=False)


@bp.get("/files/<file_id:str>/thumbnail")
@openapi.definition(summary="A small image of an image file", tag="files", secured={"bearer": []},
                    response=[_BYTES, *_DOWNLOAD_ERRORS])
@signed_or_authenticated("thumbnail")
async def thumbnail(request: Request, file_id: str) -> HTTPResponse | ResponseStream:
    """A small image of an image file."""
    return await _send(request, file_id, thumbnail=True)


@bp.get("/files/<file_id:str>/meta")
@openapi.definition(summary="The file object with its status and rejection reason", tag="files",
                    secured={"bearer": []}, response=[_resp(200, "the file", FileMetaOut), _E401, _E404])
@authenticated
async def meta(request: Request, file_id: str) -> HTTPResponse:
    """The file object with its status (and the reason of a rejection)."""
    f = await files.for_member(file_id=file_id, user_id=request.ctx.user_id)
    return json(files.meta_object(f, viewer_id=request.ctx.user_id))


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
    headers["Content-Disposition"] = media.content_disposition("inline" if inline else "attachment", name)
    headers["Content-Length"] = str(path.stat().st_size)
    return await file_stream(path, chunk_size=CHUNK, mime_type=mime, headers=headers)


def _matches(header: str | None, etag: str) -> bool:
    """If-None-Match: `*` or any listed tag (weak comparison, as RFC 9110 asks for GET)."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags
