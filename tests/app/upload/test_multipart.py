"""The streaming multipart receiver: parsing at every split, and the 413/415 gates while streaming."""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import pytest

from app.upload import multipart
from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from app.settings import Settings
from tests import samples

ALLOWED = Settings().allowed_mime
BOUNDARY = "----formboundary7MA4YWxkTrZu0gW"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def form(file: bytes, *, filename: str = "a.png", ctype: str = "image/png", before: dict[str, str] | None = None,
         after: dict[str, str] | None = None) -> bytes:
    def field(name: str, value: str) -> bytes:
        return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()

    out = b"".join(field(k, v) for k, v in (before or {}).items())
    out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n").encode() + file + b"\r\n"
    out += b"".join(field(k, v) for k, v in (after or {}).items())
    return out + f"--{BOUNDARY}--\r\n".encode()


class Source:
    """An async chunk source that records how much of the body was actually read."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.read = data, step, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.step):
            chunk = self.data[i:i + self.step]
            self.read += len(chunk)
            yield chunk


async def receive(data: bytes, dest: Path, *, step: int = 65536, max_bytes: int = 10 * 1024 * 1024,
                  ct: str = CT) -> multipart.Received:
    return await multipart.receive(Source(data, step).__aiter__(), content_type=ct, dest=dest,
                                 max_bytes=max_bytes, allowed_mime=ALLOWED)


@pytest.mark.parametrize("step", [1, 2, 3, 5, 17, 64, 1000, 8192, 1 << 20])
async def test_parses_fields_and_file_at_any_split(tmp_path: Path, step: int) -> None:
    # Data that nearly contains the delimiter must come through untouched.
    # The byte after the near-delimiter must differ from the boundary's last one, or the
    # payload would hold a real delimiter (os.urandom picked it 1 time in 256: a flaky test).
    near = BOUNDARY[:-1].encode() + bytes([BOUNDARY.encode()[-1] ^ 0x01])
    payload = samples.plain_png() + b"\r\n--" + near + os.urandom(3000)
    got = await receive(form(payload, filename='we\\"ird.png', before={"body": "hällo"}, after={"client_id": "c-1"}),
                        tmp_path / "f", step=step)
    assert (tmp_path / "f").read_bytes() == payload
    assert got.size == len(payload) and got.prefix_mime == "image/png"
    assert got.filename == 'we"ird.png' and got.claimed_mime == "image/png"
    assert got.fields == {"body": "hällo", "client_id": "c-1"}


async def test_rfc5987_filename_wins(tmp_path: Path) -> None:
    body = form(samples.TEXT).replace(b'filename="a.png"', b"filename=\"x\"; filename*=UTF-8''%C3%BCber.txt")
    got = await receive(body, tmp_path / "f")
    assert got.filename == "über.txt"


async def test_too_large_stops_reading_and_leaves_nothing(tmp_path: Path) -> None:
    limit = 1024 * 1024
    src = Source(form(samples.plain_png() + bytes(3 * limit)), 65536)
    with pytest.raises(PayloadTooLarge):
        await multipart.receive(src.__aiter__(), content_type=CT, dest=tmp_path / "f", max_bytes=limit,
                              allowed_mime=ALLOWED)
    assert src.read < limit + 2 * 65536  # stopped right after the limit, not at the end
    assert not (tmp_path / "f").exists()


async def test_disallowed_type_is_refused_from_the_first_bytes(tmp_path: Path) -> None:
    src = Source(form(samples.elf() * 40, filename="cat.png"), 4096)
    with pytest.raises(UnsupportedMediaType):
        await multipart.receive(src.__aiter__(), content_type=CT, dest=tmp_path / "f", max_bytes=10 << 20,
                              allowed_mime=ALLOWED)
    assert src.read < 64 * 1024
    assert not (tmp_path / "f").exists()
    with pytest.raises(UnsupportedMediaType):
        await receive(form(samples.SHELL_SCRIPT, filename="x.png"), tmp_path / "g")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(("body", "ct", "error"), [
    (b"{}", "application/json", UnsupportedMediaType),
    (b"x", "multipart/form-data", BadRequest),
    (form(b"abc")[:-30], CT, BadRequest),  # ends early
    (form(b""), CT, ValidationFailed),
    (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="body"\r\n\r\nhi\r\n--{BOUNDARY}--\r\n'.encode(), CT,
     ValidationFailed),
    (form(b"abc").replace(f"--{BOUNDARY}--".encode(), form(b"def")[:-2]), CT, ValidationFailed),  # two files
])
async def test_malformed_forms(tmp_path: Path, body: bytes, ct: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await receive(body, tmp_path / "f", ct=ct)
    assert not (tmp_path / "f").exists()


async def test_oversized_text_fields(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge):
        await receive(form(b"abc", before={"body": "x" * (multipart.MAX_FIELDS_BYTES + 1)}), tmp_path / "f")


@pytest.mark.parametrize("step", [1, 7, 4096])
async def test_garbage_is_a_400_never_a_500(tmp_path: Path, step: int) -> None:
    for body in (os.urandom(5000), b"--" + BOUNDARY.encode() + b"\r\nno colon here\r\n\r\n",
                 b"preamble text\r\n" + form(b"abc"), form(b"abc").replace(b"Content-Type: image/png", b"Bad Name: x")):
        with pytest.raises(BadRequest, match="Malformed multipart body"):
            await receive(body, tmp_path / "f", step=step)
        assert not (tmp_path / "f").exists()


async def test_part_headers_are_capped(tmp_path: Path) -> None:
    long_name = form(b"abc", filename="a" * multipart.MAX_PART_HEADER_BYTES + ".png")
    many_lines = form(b"abc").replace(b"Content-Type: image/png\r\n",
                                      b"X-Pad: " + b"p" * 1000 + b"\r\n" * 1 + b"X-Pad: " + b"p" * 1000 + b"\r\n"
                                      + b"X-Pad: " + b"p" * (multipart.MAX_PART_HEADER_BYTES - 1000) + b"\r\n"
                                      + b"Content-Type: image/png\r\n")
    for body in (long_name, many_lines):
        with pytest.raises(BadRequest, match="headers are too long"):
            await receive(body, tmp_path / "f", step=1000)
    too_many = form(b"abc").replace(b"Content-Type: image/png\r\n",
                                    b"X-A: 1\r\n" * multipart.MAX_PART_HEADERS + b"Content-Type: image/png\r\n")
    with pytest.raises(BadRequest):
        await receive(too_many, tmp_path / "f")
    assert not (tmp_path / "f").exists()


async def test_bare_cr_in_a_part_header_is_refused(tmp_path: Path) -> None:
    # RFC 9110 5.5 lets a recipient refuse a bare CR in a field value; python-multipart does.
    with pytest.raises(BadRequest):
        await receive(form(samples.TEXT, filename="note\rSet-Cookie: x=1\n.txt", ctype="text/plain"), tmp_path / "f")


async def test_utf8_names_and_a_quoted_filename_star(tmp_path: Path) -> None:
    got = await receive(form(samples.TEXT, filename="ф€ notes.txt", ctype="text/plain"), tmp_path / "f", step=3)
    assert got.filename == "ф€ notes.txt"
    body = form(samples.TEXT, filename="x; filename*=UTF-8''evil.txt", ctype="text/plain")
    got = await receive(body, tmp_path / "g")
    assert got.filename == "x; filename*=UTF-8''evil.txt"  # inside the quotes it is only text
    body = form(samples.TEXT).replace(b'filename="a.png"', b"filename=\"ok.txt\"; filename*=no-such-charset''%41")
    assert (await receive(body, tmp_path / "h")).filename == "ok.txt"
