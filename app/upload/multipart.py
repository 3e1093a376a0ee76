"""Receiving an upload: a streaming multipart/form-data parser and the size/type gates.

The request body is never held in memory: the file part goes to disk chunk by
chunk under a server-chosen name, the byte count is checked as it arrives (413
at once), and the first bytes are sniffed before anything is written (415 at
once when they already show a disallowed type). Small text fields (`body`,
`client_id`) may come before or after the file part.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import unquote

from app.upload import media
from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

MAX_PART_HEADER_BYTES = 16 * 1024
MAX_FIELDS_BYTES = 64 * 1024  # all text fields together; `body` is at most a few thousand chars
WRITE_BATCH = 256 * 1024  # fewer, larger writes through the file thread

_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:\\.|[^"\\])*"|[^;]*)')


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a Content-Type header, or 415 for anything but form-data."""
    mime, _, _ = content_type.partition(";")
    if mime.strip().lower() != "multipart/form-data":
        raise UnsupportedMediaType("Send the upload as multipart/form-data.")
    params = header_params(content_type)
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 200:
        raise BadRequest("The multipart boundary is missing or malformed.")
    return boundary.encode("latin-1", "replace")


def header_params(value: str) -> dict[str, str]:
    """`a; k="v"; k2=v2` -> {k: v, k2: v2}; `k*=UTF-8''...` (RFC 5987) wins over `k`."""
    out: dict[str, str] = {}
    extended: dict[str, str] = {}
    for key, raw in _PARAM.findall(value if value.startswith(";") else ";" + value.partition(";")[2]):
        key = key.lower()
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r'\\(["\\])', r"\1", raw[1:-1])
        if key.endswith("*"):
            charset, _, rest = raw.partition("'")
            _lang, _, encoded = rest.partition("'")
            try:
                extended[key[:-1]] = unquote(encoded, encoding=charset or "utf-8", errors="replace")
            except LookupError:
                continue
        else:
            out[key] = raw
    out.update(extended)
    return out


class MultipartParser:
    """Incremental multipart parser: feed() bytes, get ("part", headers) / ("data", bytes) / ("end", None)."""

    def __init__(self, boundary: bytes) -> None:
        self.delim = b"\r\n--" + boundary
        self.buf = bytearray(b"\r\n")  # the first delimiter may lack its leading CRLF
        self.state = "preamble"

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        self.buf += data
        events: list[tuple[str, object]] = []
        keep = len(self.delim) - 1
        while True:
            if self.state == "preamble":
                idx = self.buf.find(self.delim)
                if idx < 0:
                    del self.buf[: max(0, len(self.buf) - keep)]
                    return events
                del self.buf[: idx + len(self.delim)]
                self.state = "after_delim"
            elif self.state == "after_delim":
                stripped = self.buf.lstrip(b" \t")  # transport padding (RFC 2046)
                if len(stripped) < 2:
                    return events
                if stripped[:2] == b"--":
                    self.state, self.buf = "done", bytearray()
                    return events
                if stripped[:2] != b"\r\n":
                    raise BadRequest("Malformed multipart body.")
                self.buf = bytearray(stripped[2:])
                self.state = "headers"
            elif self.state == "headers":
                if self.buf[:2] == b"\r\n":
                    head, rest = b"", 2
                else:
                    idx = self.buf.find(b"\r\n\r\n")
                    if idx < 0:
                        if len(self.buf) > MAX_PART_HEADER_BYTES:
                            raise BadRequest("Multipart part headers are too long.")
                        return events
                    head, rest = bytes(self.buf[:idx]), idx + 4
                if rest > MAX_PART_HEADER_BYTES:
                    raise BadRequest("Multipart part headers are too long.")
                del self.buf[:rest]
                events.append(("part", _parse_headers(head)))
                self.state = "body"
            elif self.state == "body":
                idx = self.buf.find(self.delim)
                if idx < 0:
                    if len(self.buf) > keep:
                        events.append(("data", bytes(self.buf[: len(self.buf) - keep])))
                        del self.buf[: len(self.buf) - keep]
                    return events
                if idx:
                    events.append(("data", bytes(self.buf[:idx])))
                events.append(("end", None))
                del self.buf[: idx + len(self.delim)]
                self.state = "after_delim"
            else:  # done: the epilogue is ignored
                self.buf.clear()
                return events


def _parse_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


@dataclass
class Received:
    """What came in: the file part (on disk at `path`) and the text fields."""

    path: Path
    filename: str = ""
    claimed_mime: str | None = None
    size: int = 0
    prefix_mime: str = ""
    fields: dict[str, str] = field(default_factory=dict)


async def receive(chunks: AsyncIterator[bytes], *, content_type: str, dest: Path,
                  max_bytes: int, allowed_mime: tuple[str, ...]) -> Received:
    """Stream the multipart body: the `file` part to `dest`, text fields into memory.

    Raises 413 as soon as the file part passes `max_bytes`, 415 as soon as its
    first bytes show a disallowed type, 422 when there is no (non-empty) file.
    `dest` is removed on any failure, so no partial upload stays behind.
    """
    parser = MultipartParser(boundary_of(content_type))
    got = Received(path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fh = None
    pending = bytearray()  # the sniff prefix first, then a write batch
    current: dict[str, str] | None = None
    in_file = seen_file = False
    field_buf = bytearray()
    fields_total = 0
    try:
        async for chunk in chunks:
            for kind, value in parser.feed(chunk):
                if kind == "part":
                    current = value  # type: ignore[assignment]
                    disp = header_params(current.get("content-disposition", ""))
                    in_file = disp.get("name") == "file"
                    if in_file:
                        if seen_file:
                            raise ValidationFailed({"file": "Send exactly one file per upload."})
                        seen_file = True
                        got.filename = disp.get("filename", "")
                        got.claimed_mime = (current.get("content-type") or "")[:128] or None
                        fh = await asyncio.to_thread(open, dest, "wb")
                    field_buf.clear()
                elif kind == "data":
                    data: bytes = value  # type: ignore[assignment]
                    if in_file:
                        got.size += len(data)
                        if got.size > max_bytes:
                            raise PayloadTooLarge(f"The file is larger than {max_bytes} bytes.",
                                                  details={"max_bytes": max_bytes})
                        pending += data
                        if not got.prefix_mime and len(pending) >= media.SNIFF_BYTES:
                            _gate(got, pending, allowed_mime)
                        if got.prefix_mime and len(pending) >= WRITE_BATCH:
                            await asyncio.to_thread(fh.write, bytes(pending))
                            pending.clear()
                    else:
                        fields_total += len(data)
                        if fields_total > MAX_FIELDS_BYTES:
                            raise PayloadTooLarge("The form fields are too large.")
                        field_buf += data
                else:  # end of a part
                    if in_file:
                        if not got.prefix_mime:
                            _gate(got, pending, allowed_mime)
                        await asyncio.to_thread(fh.write, bytes(pending))
                        pending.clear()
                        await asyncio.to_thread(fh.close)
                        fh = None
                        in_file = False
                    elif current is not None:
                        name = header_params(current.get("content-disposition", "")).get("name", "")
                        if name:
                            got.fields[name] = field_buf.decode("utf-8", "replace")
                    current = None
        if not parser.done:
            raise BadRequest("The multipart body ended early.")
        if not seen_file:
            raise ValidationFailed({"file": "A file part named 'file' is required."})
        if got.size == 0:
            raise ValidationFailed({"file": "The file is empty."})
        return got
    except BaseException:
        if fh is not None:  # plain calls: this also runs when the client went away (cancelled)
            fh.close()
        dest.unlink(missing_ok=True)
        raise


def _gate(got: Received, prefix: bytearray, allowed: tuple[str, ...]) -> None:
    """Sniff the first bytes once; a type that is already off the list is a 415 now."""
    got.prefix_mime = media.sniff(bytes(prefix[: media.SNIFF_BYTES]))
    if media.clearly_disallowed(got.prefix_mime, allowed):
        raise UnsupportedMediaType(f"File type {got.prefix_mime} is not allowed.",
                                   details={"mime": got.prefix_mime})
