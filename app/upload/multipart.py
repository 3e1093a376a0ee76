"""Receiving an upload: multipart/form-data streamed through python-multipart, with the size/type gates.

python-multipart does the framing (boundaries at any chunk split, part headers, the
closing delimiter); this module decides what the parts mean and keeps the invariants:

- the request body is never held in memory: the `file` part goes to disk batch by
  batch under a server-chosen name (`dest`), only small text fields are kept;
- the file's byte count is checked as it arrives (413 at once, the rest unread), and
  its first bytes are sniffed before anything is written (415 at once when they
  already show a disallowed type);
- part headers and text fields are capped, so no part can make the server buffer;
- anything the parser refuses is a 400, never a 500, and `dest` never outlives a failure.

Small text fields (`body`, `client_id`) may come before or after the file part.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.upload import sniff
from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

if TYPE_CHECKING:  # the library declares its callback table for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MAX_PART_HEADER_BYTES = 16 * 1024  # all header names and values of one part together
MAX_PART_HEADERS = 32  # real clients send two or three per part
MAX_FIELDS_BYTES = 64 * 1024  # all text fields together; `body` is at most a few thousand chars
WRITE_BATCH = 256 * 1024  # fewer, larger writes through the file thread

_QUOTED = re.compile(r'"(?:\\.|[^"\\])*"')
_FILENAME_STAR = re.compile(r"(?:^|;)\s*filename\*\s*=\s*([^;\s]*)", re.IGNORECASE)


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a Content-Type header, or 415 for anything but form-data."""
    # parse_options_header works on latin-1 (the wire's octets); a header that is not is no boundary.
    mime, params = parse_options_header(content_type.encode("latin-1", "replace").decode("latin-1"))
    if mime != b"multipart/form-data":
        raise UnsupportedMediaType("Send the upload as multipart/form-data.")
    boundary = params.get(b"boundary", b"")
    if not 1 <= len(boundary) <= 200:
        raise BadRequest("The multipart boundary is missing or malformed.")
    return boundary


@dataclass
class Part:
    """One part's headers, as far as an upload cares: its field name, file name and declared type."""

    name: str
    filename: str
    content_type: str | None


def part_of(headers: dict[str, bytes]) -> Part:
    """Read a part's Content-Disposition (name, filename) and Content-Type.

    Header bytes are UTF-8 (RFC 7578 §5.1: browsers send the file name raw, quoted as
    `"we\\"ird.png"`); python-multipart's parser works on latin-1, so the octets go
    through it unchanged and are decoded once at the end.
    """
    disposition = headers.get("content-disposition", b"").decode("latin-1")
    _kind, params = parse_options_header(disposition)
    name = params.get(b"name", b"").decode("utf-8", "replace")
    filename = _extended_filename(disposition)
    if filename is None:
        filename = params.get(b"filename", b"").decode("utf-8", "replace")
    claimed = headers.get("content-type", b"").decode("utf-8", "replace").strip()[:128] or None
    return Part(name=name, filename=filename, content_type=claimed)


def _extended_filename(disposition: str) -> str | None:
    """An RFC 5987 `filename*=UTF-8''%C3%BC...`, which wins over `filename`; None if absent or unreadable.

    python-multipart follows RFC 7578 §4.2 and drops `filename*`; older non-browser
    clients send the only faithful name there, and uploads have always honoured it.
    Quoted strings are blanked first, so a `filename*=` inside a quoted name is not one.
    """
    found = _FILENAME_STAR.search(_QUOTED.sub('""', disposition))
    if found is None:
        return None
    charset, _, rest = found.group(1).partition("'")
    _lang, _, encoded = rest.partition("'")
    try:
        # Raw octets outside the %-escapes are UTF-8, like the rest of the part's headers.
        return unquote(encoded.encode("latin-1").decode("utf-8", "replace"), encoding=charset or "utf-8",
                       errors="replace")
    except LookupError:  # an unknown charset: fall back to the plain filename
        return None


class _Events:
    """python-multipart's callbacks collected as ("part", Part) / ("data", memoryview) / ("end", None).

    The callbacks are synchronous and run inside `parser.write()`; receive() works through
    what one chunk produced afterwards, where it can await the disk.
    """

    def __init__(self) -> None:
        self.out: list[tuple[str, object]] = []
        self.ended = False
        self._headers: dict[str, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def take(self) -> list[tuple[str, object]]:
        out, self.out = self.out, []
        return out

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise BadRequest("Multipart part headers are too long.")

    def _part_begin(self) -> None:
        self._headers, self._header_bytes = {}, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self.out.append(("part", part_of(self._headers)))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        # A view, not a copy: `data` is the immutable chunk (or boundary look-behind) just written.
        self.out.append(("data", memoryview(data)[start:end]))

    def _part_end(self) -> None:
        self.out.append(("end", None))

    def _end(self) -> None:
        self.ended = True


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
    first bytes show a disallowed type, 422 when there is no (non-empty) file,
    400 for a body that is not multipart. `dest` is removed on any failure, so no
    partial upload stays behind.
    """
    events = _Events()
    # The library's per-line cap is only a backstop (it also counts the colon and skipped
    # spaces): the part's total, counted in _Events, is the limit a client meets.
    parser = MultipartParser(boundary_of(content_type), callbacks=events.callbacks(),
                             max_header_count=MAX_PART_HEADERS, max_header_size=2 * MAX_PART_HEADER_BYTES)
    got = Received(path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fh = None
    pending = bytearray()  # the sniff prefix first, then a write batch
    current: Part | None = None
    in_file = seen_file = False
    field_buf = bytearray()
    fields_total = 0
    try:
        async for chunk in chunks:
            try:
                parser.write(chunk)
            except FormParserError:
                raise BadRequest("Malformed multipart body.") from None
            for kind, value in events.take():
                if kind == "part":
                    current = value  # type: ignore[assignment]
                    in_file = current.name == "file"  # type: ignore[union-attr]
                    if in_file:
                        if seen_file:
                            raise ValidationFailed({"file": "Send exactly one file per upload."})
                        seen_file = True
                        got.filename = current.filename  # type: ignore[union-attr]
                        got.claimed_mime = current.content_type  # type: ignore[union-attr]
                        fh = await asyncio.to_thread(open, dest, "wb")
                    field_buf.clear()
                elif kind == "data":
                    data: memoryview = value  # type: ignore[assignment]
                    if in_file:
                        got.size += len(data)
                        if got.size > max_bytes:
                            raise PayloadTooLarge(f"The file is larger than {max_bytes} bytes.",
                                                  details={"max_bytes": max_bytes})
                        pending += data
                        if not got.prefix_mime and len(pending) >= sniff.SNIFF_BYTES:
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
                    elif current is not None and current.name:
                        got.fields[current.name] = field_buf.decode("utf-8", "replace")
                    current = None
        if not events.ended:
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
    got.prefix_mime = sniff.sniff(bytes(prefix[: sniff.SNIFF_BYTES]))
    if sniff.clearly_disallowed(got.prefix_mime, allowed):
        raise UnsupportedMediaType(f"File type {got.prefix_mime} is not allowed.",
                                   details={"mime": got.prefix_mime})
