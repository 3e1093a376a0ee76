"""Files end to end: a real server and a real dramatiq worker sharing a temporary MEDIA_ROOT.

Real files are made in the tests (tests/samples.py); the upload goes
through HTTP, the worker sniffs and re-encodes it, the message arrives on a WebSocket
and in history, and the bytes come back clean, only to members.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import websockets
from PIL import Image

from app.settings import Settings
from tests import samples
from tests.env import RUN_ID, TEST_ENV
from tests.factories import TestUser, make_room, make_user
from tests.support import Proc, ServerProc, worker_argv

MiB = 1024 * 1024
# Every name under MEDIA_ROOT is the server's: <uuid>[.thumb].<ext of a sniffed type>.
SERVER_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                         r"(\.thumb)?(\.(png|jpg|gif|webp|pdf|txt|zip|docx?|xlsx?|pptx?|odt|ods|odp))?$")


class Stack:
    def __init__(self, media_root: Path, server: ServerProc, worker: Proc) -> None:
        self.media_root, self.server, self.worker = media_root, server, worker
        self.api = httpx.Client(base_url=server.base_url, timeout=20.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    media_root = tmp_path_factory.mktemp("media")
    env = {**TEST_ENV, "MEDIA_ROOT": str(media_root)}
    server = ServerProc(env, name=f"files-server-{RUN_ID}")
    worker = Proc(f"files-worker-{RUN_ID}", worker_argv(processes=1, threads=2), env)
    try:
        server.wait_ready()
        s = Stack(media_root, server, worker)
        yield s
        s.api.close()
    finally:
        worker.stop()
        server.stop()


@pytest.fixture(scope="module")
def people(stack: Stack) -> dict[str, Any]:
    owner, member, outsider = make_user(stack.api), make_user(stack.api), make_user(stack.api)
    room = make_room(stack.api, owner, is_private=True, member_ids=[member.id])
    public = make_room(stack.api, owner, is_private=False, member_ids=[member.id])
    return {"owner": owner, "member": member, "outsider": outsider, "room": room["id"], "public": public["id"]}


def upload(stack: Stack, user: TestUser, room_id: str, data: bytes, name: str = "a.bin",
           ctype: str = "application/octet-stream", **fields: str) -> httpx.Response:
    return stack.api.post(f"/rooms/{room_id}/files", headers=user.headers, files={"file": (name, data, ctype)},
                          data=fields)


def wait_done(stack: Stack, user: TestUser, file_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll /meta until processing has ended (the worker's verdict)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = stack.api.get(f"/files/{file_id}/meta", headers=user.headers)
        assert meta.status_code == 200, meta.text
        if meta.json()["status"] != "processing":
            return meta.json()
        if not stack.worker.alive():
            raise AssertionError(f"worker died:\n{stack.worker.log_tail()}")
        time.sleep(0.1)
    raise AssertionError(f"file {file_id} still processing after {timeout}s:\n{stack.worker.log_tail()}")


def processed(stack: Stack, people: dict[str, Any], data: bytes, name: str, ctype: str, **fields: str) -> dict[str, Any]:
    resp = upload(stack, people["owner"], people["room"], data, name, ctype, **fields)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "processing"
    return wait_done(stack, people["owner"], resp.json()["id"])


def fetch(stack: Stack, user: TestUser, url: str) -> httpx.Response:
    return stack.api.get(url, headers=user.headers)


def assert_clean_image(content: bytes) -> Image.Image:
    assert samples.SECRET not in content and b"Exif" not in content and b"PK\x03\x04" not in content
    im = Image.open(io.BytesIO(content))
    assert len(im.getexif()) == 0 and not {"exif", "xmp", "icc_profile", "comment"} & set(im.info)
    return im


# -- images ------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "name", "ctype", "mime", "fmt"), [
    (samples.jpeg_with_gps(), "holiday.jpg", "image/jpeg", "image/jpeg", "JPEG"),
    (samples.png_with_gps(), "screen shot.png", "image/png", "image/png", "PNG"),
])
def test_photo_comes_back_without_gps_and_upright(stack: Stack, people: dict[str, Any], data: bytes, name: str,
                                                  ctype: str, mime: str, fmt: str) -> None:
    meta = processed(stack, people, data, name, ctype)
    assert meta["status"] == "ready" and meta["reason"] is None
    assert meta["mime"] == mime and meta["name"] == name and meta["expired"] is False
    assert meta["thumbnail_url"] == f"/files/{meta['id']}/thumbnail" and meta["expires_at"]
    got = fetch(stack, people["member"], meta["url"])
    assert got.status_code == 200
    assert got.headers["content-type"] == mime
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"].startswith("inline;")
    im = assert_clean_image(got.content)
    assert im.format == fmt and im.size == (40, 60)  # orientation 6 applied
    assert im.convert("RGB").getpixel((20, 10))[0] > 200 and im.convert("RGB").getpixel((20, 50))[2] > 200
    assert int(got.headers["content-length"]) == len(got.content) == meta["size"]
    thumb = fetch(stack, people["member"], meta["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] in ("image/jpeg", "image/png")
    assert_clean_image(thumb.content)


@pytest.mark.parametrize(("data", "name", "mime", "frames"), [
    (samples.animated_gif(), "dance.gif", "image/gif", 3),
    (samples.webp(), "still.webp", "image/webp", 1),
    (samples.webp(animated=True), "moving.webp", "image/webp", 3),
])
def test_gif_and_webp(stack: Stack, people: dict[str, Any], data: bytes, name: str, mime: str, frames: int) -> None:
    meta = processed(stack, people, data, name, mime)
    assert meta["status"] == "ready" and meta["mime"] == mime
    got = fetch(stack, people["owner"], meta["url"])
    assert got.status_code == 200 and got.headers["content-type"] == mime
    assert getattr(assert_clean_image(got.content), "n_frames", 1) == frames
    assert fetch(stack, people["owner"], meta["thumbnail_url"]).status_code == 200


def test_polyglot_is_served_clean(stack: Stack, people: dict[str, Any]) -> None:
    meta = processed(stack, people, samples.polyglot_png_zip(), "innocent.png", "image/png")
    assert meta["status"] == "ready"
    got = fetch(stack, people["owner"], meta["url"])
    assert got.status_code == 200 and b"PK\x03\x04" not in got.content and b"payload.sh" not in got.content
    assert_clean_image(got.content)


def test_decompression_bomb_is_rejected(stack: Stack, people: dict[str, Any]) -> None:
    meta = processed(stack, people, samples.bomb_png(30000), "bomb.png", "image/png")
    assert meta["status"] == "rejected" and re.search("pixels|too large", meta["reason"])
    for url in (meta["url"], f"{meta['url']}/thumbnail"):
        resp = fetch(stack, people["owner"], url)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "file_not_found"
    assert not list((stack.media_root / "incoming").glob(f"{meta['id']}*"))
    assert not list(stack.media_root.rglob(f"{meta['id']}.*"))


# -- what is refused -------------------------------------------------------------

@pytest.mark.parametrize("data", [samples.elf(), samples.SHELL_SCRIPT])
def test_executable_renamed_png_is_refused_at_once(stack: Stack, people: dict[str, Any], data: bytes) -> None:
    resp = upload(stack, people["owner"], people["room"], data, "cute-cat.png", "image/png")
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"]["code"] == "unsupported_media_type"


def test_text_renamed_png_is_rejected_after_processing(stack: Stack, people: dict[str, Any]) -> None:
    meta = processed(stack, people, b"rm -rf / --no-preserve-root\n" * 3, "cat.png", "image/png")
    assert meta["status"] == "rejected" and "claims to be image" in meta["reason"]
    assert fetch(stack, people["owner"], meta["url"]).status_code == 404


def test_declared_oversize_gets_413_before_the_body(stack: Stack, people: dict[str, Any]) -> None:
    head = (f"POST /rooms/{people['room']}/files HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {people['owner'].access_token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {11 * MiB}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=10) as sock:
        sock.sendall(head)  # not one byte of the body
        status, body = _read_response(sock)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_streamed_oversize_gets_413_and_is_not_kept(stack: Stack, people: dict[str, Any]) -> None:
    """Chunked, so no Content-Length warns the server: the count while streaming must stop it."""
    before = _media_files(stack)
    head = (f"POST /rooms/{people['room']}/files HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {people['owner'].access_token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
    sent = [0]

    def sender(sock: socket.socket) -> None:
        try:
            sock.sendall(head + _chunk(part))
            block = _chunk(b"A" * (64 * 1024))
            for _ in range(11 * 16):  # 11 MiB of text
                sock.sendall(block)
                sent[0] += 64 * 1024
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server hung up on us: expected

    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=20) as sock:
        t = threading.Thread(target=sender, args=(sock,), daemon=True)
        t.start()
        status, body = _read_response(sock)
        t.join(20)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    time.sleep(0.2)
    new = _media_files(stack) - before
    assert not [p for p in new if p.exists()], new  # the partial upload is gone
    assert all(p.stat().st_size < 10 * MiB for p in stack.media_root.rglob("*") if p.is_file())


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return status, json.loads(rest[:length])


def _media_files(stack: Stack) -> set[Path]:
    return {p for p in stack.media_root.rglob("*") if p.is_file()}


# -- who may see what --------------------------------------------------------------

def test_non_members_get_404_on_everything(stack: Stack, people: dict[str, Any]) -> None:
    meta = processed(stack, people, samples.plain_png(), "x.png", "image/png")
    assert meta["status"] == "ready"
    for url in (meta["url"], meta["thumbnail_url"], f"{meta['url']}/meta"):
        resp = fetch(stack, people["outsider"], url)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "file_not_found", url
    # The same answer for an unknown id and a malformed one: nothing leaks.
    for fid in (str(uuid.uuid4()), "not-a-uuid", "..%2F..%2Fetc%2Fpasswd"):
        for suffix in ("", "/thumbnail", "/meta"):
            resp = fetch(stack, people["member"], f"/files/{fid}{suffix}")
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "file_not_found"
    assert stack.api.get(meta["url"]).status_code == 401


def test_only_members_may_upload(stack: Stack, people: dict[str, Any]) -> None:
    private = upload(stack, people["outsider"], people["room"], samples.plain_png(), "x.png", "image/png")
    assert private.status_code == 404 and private.json()["error"]["code"] == "room_not_found"
    public = upload(stack, people["outsider"], people["public"], samples.plain_png(), "x.png", "image/png")
    assert public.status_code == 403 and public.json()["error"]["code"] == "not_member"
    missing = upload(stack, people["owner"], "nope", samples.plain_png(), "x.png", "image/png")
    assert missing.status_code == 404


def test_not_ready_while_processing_then_ready(stack: Stack, people: dict[str, Any]) -> None:
    resp = upload(stack, people["owner"], people["room"], samples.jpeg_with_gps(), "p.jpg", "image/jpeg")
    assert resp.status_code == 202
    early = fetch(stack, people["owner"], resp.json()["url"])
    # The worker may be fast; either it is still processing (409) or it is done (200).
    assert early.status_code in (200, 409)
    if early.status_code == 409:
        assert early.json()["error"]["code"] == "file_not_ready"
    assert wait_done(stack, people["owner"], resp.json()["id"])["status"] == "ready"


# -- documents, names and headers ------------------------------------------------

@pytest.mark.parametrize(("data", "name", "mime", "stored"), [
    (samples.pdf(), "report.pdf", "application/pdf", "report.pdf"),
    (samples.docx(), "letter.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     "letter.docx"),
    (samples.TEXT, "../../etc/passwd", "text/plain", "passwd.txt"),
    (samples.zip_bytes(), "..\\..\\windows\\evil.zip", "application/zip", "evil.zip"),
])
def test_documents_are_attachments_with_safe_names(stack: Stack, people: dict[str, Any], data: bytes, name: str,
                                                   mime: str, stored: str) -> None:
    meta = processed(stack, people, data, name, "application/octet-stream")
    assert meta["status"] == "ready" and meta["mime"] == mime and meta["name"] == stored
    assert meta["thumbnail_url"] is None
    got = fetch(stack, people["member"], meta["url"])
    assert got.status_code == 200 and got.content == data  # documents are kept byte for byte
    assert got.headers["content-type"].split(";")[0] == mime
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"] == f"attachment; filename=\"{stored}\"; filename*=UTF-8''{stored}"
    thumb = fetch(stack, people["member"], f"{meta['url']}/thumbnail")
    assert thumb.status_code == 404


def test_crlf_in_the_name_is_harmless(stack: Stack, people: dict[str, Any]) -> None:
    boundary = "XyZ"
    raw = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
           f"filename=\"note\rSet-Cookie: pwned=1\n.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
    raw += samples.TEXT + f"\r\n--{boundary}--\r\n".encode()
    # A bare CR in a part header is refused outright (RFC 9110 5.5; python-multipart does).
    resp = stack.api.post(f"/rooms/{people['room']}/files", content=raw, headers={
        **people["owner"].headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request", resp.text
    # A bare LF stays inside the header value: the name keeps none of it.
    bare_lf = raw.replace(b"note\rSet-Cookie", b"note\nSet-Cookie")
    resp = stack.api.post(f"/rooms/{people['room']}/files", content=bare_lf, headers={
        **people["owner"].headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status_code == 202, resp.text
    assert "\r" not in resp.json()["name"] and "\n" not in resp.json()["name"]
    meta = wait_done(stack, people["owner"], resp.json()["id"])
    got = fetch(stack, people["owner"], meta["url"])
    assert got.status_code == 200 and "set-cookie" not in got.headers
    assert "\r" not in got.headers["content-disposition"] and "\n" not in got.headers["content-disposition"]
    # A header-splitting attempt in the multipart header itself: the name is cut, never obeyed.
    raw2 = raw.replace(b"filename=\"note\rSet-Cookie: pwned=1\n.txt\"", b"filename=\"a.txt\r\nX-Evil: 1\"")
    resp2 = stack.api.post(f"/rooms/{people['room']}/files", content=raw2, headers={
        **people["owner"].headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp2.status_code == 202, resp2.text
    assert "\n" not in resp2.json()["name"] and "\r" not in resp2.json()["name"]


def test_etag_gives_304(stack: Stack, people: dict[str, Any]) -> None:
    meta = processed(stack, people, samples.plain_png(), "e.png", "image/png")
    first = fetch(stack, people["member"], meta["url"])
    etag = first.headers["etag"]
    again = stack.api.get(meta["url"], headers={**people["member"].headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = stack.api.get(meta["url"], headers={**people["member"].headers, "If-None-Match": '"other"'})
    assert other.status_code == 200
    # A non-member cannot use the ETag to probe either.
    probe = stack.api.get(meta["url"], headers={**people["outsider"].headers, "If-None-Match": etag})
    assert probe.status_code == 404


def test_retried_client_id_returns_the_first_upload(stack: Stack, people: dict[str, Any]) -> None:
    cid = f"up-{uuid.uuid4().hex[:8]}"
    first = upload(stack, people["owner"], people["room"], samples.plain_png(), "r.png", "image/png", client_id=cid)
    second = upload(stack, people["owner"], people["room"], samples.plain_png(), "r.png", "image/png", client_id=cid)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    meta = wait_done(stack, people["owner"], first.json()["id"])
    assert meta["status"] == "ready" and meta["client_id"] == cid and meta["seq"] >= 1


def test_bad_fields_are_422(stack: Stack, people: dict[str, Any]) -> None:
    resp = upload(stack, people["owner"], people["room"], samples.plain_png(), "x.png", "image/png",
                  client_id="x" * 65)
    assert resp.status_code == 422 and "client_id" in resp.json()["error"]["details"]["fields"]
    nul = upload(stack, people["owner"], people["room"], samples.plain_png(), "x.png", "image/png", body="a\x00b")
    assert nul.status_code == 422 and "body" in nul.json()["error"]["details"]["fields"]
    no_file = stack.api.post(f"/rooms/{people['room']}/files", headers=people["owner"].headers,
                             files={"other": ("x", b"abc")})
    assert no_file.status_code == 422 and "file" in no_file.json()["error"]["details"]["fields"]
    as_json = stack.api.post(f"/rooms/{people['room']}/files", headers=people["owner"].headers, json={"file": "x"})
    assert as_json.status_code == 415


# -- the message, live and in history ---------------------------------------------

async def _recv_until(ws: Any, pred: Any, timeout: float = 20.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - loop.time())))
        if pred(frame):
            return frame


async def test_image_message_arrives_live_and_in_history(stack: Stack, people: dict[str, Any]) -> None:
    owner, member = people["owner"], people["member"]
    url = stack.server.ws_url
    async with websockets.connect(f"{url}?token={member.access_token}") as mws, \
            websockets.connect(f"{url}?token={owner.access_token}") as ows:
        for ws in (mws, ows):
            assert json.loads(await ws.recv())["type"] == "hello"
        cid = f"img-{uuid.uuid4().hex[:8]}"
        resp = await asyncio.to_thread(upload, stack, owner, people["room"], samples.jpeg_with_gps(), "look.jpg",
                                       "image/jpeg", body="look at this", client_id=cid)
        assert resp.status_code == 202, resp.text
        fid = resp.json()["id"]
        live = await _recv_until(mws, lambda f: f["type"] == "message" and (f["message"]["file"] or {}).get("id") == fid)
        msg = live["message"]
        assert msg["kind"] == "image" and msg["body"] == "look at this" and msg["sender_id"] == owner.id
        assert msg["client_id"] == cid and msg["room_id"] == people["room"]
        assert set(msg["file"]) == {"id", "name", "mime", "size", "url", "thumbnail_url", "expires_at", "expired"}
        assert msg["file"]["url"] == f"/files/{fid}" and msg["file"]["mime"] == "image/jpeg"
        status = await _recv_until(ows, lambda f: f["type"] == "file_status" and f["file"]["id"] == fid)
        assert status["file"]["status"] == "ready" and status["file"]["seq"] == msg["seq"]

        # A rejection is told to the uploader alone, with the reason.
        bad = await asyncio.to_thread(upload, stack, owner, people["room"], b"just text\n" * 5, "x.png", "image/png")
        bad_id = bad.json()["id"]
        rejected = await _recv_until(ows, lambda f: f["type"] == "file_status" and f["file"]["id"] == bad_id)
        assert rejected["file"]["status"] == "rejected" and rejected["file"]["reason"]

    history = await asyncio.to_thread(stack.api.get, f"/rooms/{people['room']}/messages",
                                      headers=member.headers, params={"limit": 200})
    assert history.status_code == 200, history.text
    found = [m for m in history.json()["items"] if m["seq"] == msg["seq"]]
    assert found and found[0]["file"] == msg["file"] and found[0]["kind"] == "image"
    assert not [m for m in history.json()["items"] if (m["file"] or {}).get("id") == bad_id]


# -- expiry ----------------------------------------------------------------------

async def test_expired_file_is_gone_with_410(stack: Stack, people: dict[str, Any], db: None,
                                             settings: Settings) -> None:
    from app import files
    from app.serialize import utcnow
    from models.file import File

    meta = await asyncio.to_thread(processed, stack, people, samples.pdf(), "old.pdf", "application/pdf")
    img = await asyncio.to_thread(processed, stack, people, samples.plain_png(), "old.png", "image/png")
    row = await File.get(id=img["id"])
    stored = [stack.media_root / row.storage_path, stack.media_root / row.thumbnail_path]
    assert all(p.is_file() for p in stored)
    await File.filter(id__in=[meta["id"], img["id"]]).update(expires_at=utcnow() - timedelta(minutes=1))
    # Past expires_at is gone at once, even before the sweep has run.
    assert (await asyncio.to_thread(fetch, stack, people["owner"], meta["url"])).status_code == 410

    swept = await files.sweep_expired(settings=settings.replace(media_root=str(stack.media_root)), batch=1)
    assert swept >= 2
    assert not any(p.exists() for p in stored)
    for url in (meta["url"], img["url"], img["thumbnail_url"]):
        resp = await asyncio.to_thread(fetch, stack, people["member"], url)
        assert resp.status_code == 410 and resp.json()["error"]["code"] == "file_expired"
    m = (await asyncio.to_thread(fetch, stack, people["member"], f"{img['url']}/meta")).json()
    assert m["status"] == "expired" and m["expired"] is True
    history = await asyncio.to_thread(stack.api.get, f"/rooms/{people['room']}/messages",
                                      headers=people["member"].headers, params={"limit": 200})
    shown = [x["file"] for x in history.json()["items"] if (x["file"] or {}).get("id") == img["id"]]
    assert shown and shown[0]["expired"] is True
    assert await files.sweep_expired(settings=settings.replace(media_root=str(stack.media_root))) == 0


def test_nothing_in_media_root_is_named_by_a_client(stack: Stack) -> None:
    """After the upload tests of this module: every file any of them stored has a server-chosen name."""
    stored = [p for p in stack.media_root.rglob("*") if p.is_file()]
    assert stored
    for p in stored:
        rel = p.relative_to(stack.media_root).parts
        assert SERVER_NAME.match(p.name), p
        assert rel[0] == "incoming" or re.fullmatch(r"\d{4}", rel[0]), p
    assert not list(stack.media_root.rglob("*passwd*")) and not list(stack.media_root.rglob("*evil*"))


def test_routes_are_documented(stack: Stack) -> None:
    spec = stack.api.get("/docs/openapi.json").json()
    post = spec["paths"]["/rooms/{room_id}/files"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"202", "413", "415"} <= set(post["responses"])
    for path in ("/files/{file_id}", "/files/{file_id}/thumbnail", "/files/{file_id}/meta"):
        assert {"200", "404"} <= set(spec["paths"][path]["get"]["responses"])


# -- answers a real client receives (issue 9, point 7) ------------------------------

def _multipart_chunks(file_bytes: int, boundary: str = "b") -> Iterator[bytes]:
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
           "Content-Type: text/plain\r\n\r\n").encode()
    block = b"A" * (256 * 1024)
    left = file_bytes
    while left > 0:
        yield block[:left]
        left -= len(block)
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("extra", [1, 100 * 1024, MiB])
def test_httpx_sees_413_for_a_file_over_the_limit(stack: Stack, people: dict[str, Any], extra: int) -> None:
    """httpx writes the whole body before it reads: the server must not close on it mid-send."""
    limit = Settings.load(env=TEST_ENV, env_file=None).max_upload_bytes
    resp = upload(stack, people["owner"], people["room"], b"A" * (limit + extra), "big.txt", "text/plain")
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert resp.json()["error"]["details"]["max_bytes"] == limit


def test_httpx_sees_413_for_a_chunked_file_over_the_limit(stack: Stack, people: dict[str, Any]) -> None:
    limit = Settings.load(env=TEST_ENV, env_file=None).max_upload_bytes
    resp = stack.api.post(f"/rooms/{people['room']}/files", content=_multipart_chunks(limit + MiB),
                          headers={**people["owner"].headers, "content-type": "multipart/form-data; boundary=b"})
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "payload_too_large"
    # The server is still fine for the next client (and the next request works).
    ok = upload(stack, people["owner"], people["room"], b"small text\n", "s.txt", "text/plain")
    assert ok.status_code == 202, ok.text


def test_httpx_sees_413_for_a_json_body_over_the_limit(stack: Stack, people: dict[str, Any]) -> None:
    limit = Settings.load(env=TEST_ENV, env_file=None).request_max_bytes
    big = b'{"body": "' + b"x" * (3 * limit) + b'"}'
    headers = {**people["owner"].headers, "content-type": "application/json"}
    resp = stack.api.post(f"/rooms/{people['room']}/messages", content=big, headers=headers)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]

    resp = stack.api.post(f"/rooms/{people['room']}/messages", content=chunks(), headers=headers)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"


def test_json_body_over_the_limit_is_refused_before_it_is_read(stack: Stack, people: dict[str, Any]) -> None:
    """A Content-Length over REQUEST_MAX_BYTES is answered without sending a byte of the body."""
    limit = Settings.load(env=TEST_ENV, env_file=None).request_max_bytes
    head = (f"POST /rooms/{people['room']}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {people['owner'].access_token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=10) as sock:
        sock.sendall(head)
        status, body = _read_response(sock)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_png_declared_as_jpeg_is_rejected_and_only_the_uploader_sees_why(stack: Stack,
                                                                        people: dict[str, Any]) -> None:
    png = samples.png_with_gps()
    meta = processed(stack, people, png, "x.jpg", "image/jpeg")
    assert meta["status"] == "rejected", meta
    assert "image/jpeg" in meta["reason"] and "image/png" in meta["reason"]
    other = stack.api.get(f"/files/{meta['id']}/meta", headers=people["member"].headers)
    assert other.status_code == 200 and other.json()["status"] == "rejected"
    assert other.json()["reason"] is None
    # The extension alone is a declaration too; octet-stream declares nothing.
    assert processed(stack, people, png, "x.jpg", "application/octet-stream")["status"] == "rejected"
    assert processed(stack, people, png, "x.png", "image/png")["status"] == "ready"
    assert processed(stack, people, png, "upload", "application/octet-stream")["status"] == "ready"


def test_uploads_are_rate_limited_per_user_before_the_body(tmp_path: Path) -> None:
    env = {**TEST_ENV, "MEDIA_ROOT": str(tmp_path), "RATE_UPLOADS": "2", "RATE_UPLOADS_WINDOW_S": "60"}
    server = ServerProc(env, name=f"files-rate-{RUN_ID}")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=20.0) as api:
            user, other = make_user(api), make_user(api)
            room = make_room(api, user, member_ids=[other.id])["id"]
            for _ in range(2):
                ok = api.post(f"/rooms/{room}/files", headers=user.headers, files={"file": ("a.txt", b"hi\n")})
                assert ok.status_code == 202, ok.text
            resp = api.post(f"/rooms/{room}/files", headers=user.headers, files={"file": ("a.txt", b"hi\n")})
            assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(resp.headers["retry-after"]) <= 60
            # Counted before anything else: even an upload to a room that does not exist.
            resp = api.post(f"/rooms/{uuid.uuid4()}/files", headers=user.headers, files={"file": ("a", b"x")})
            assert resp.status_code == 429
            # Per user: another member still may.
            ok = api.post(f"/rooms/{room}/files", headers=other.headers, files={"file": ("a.txt", b"hi\n")})
            assert ok.status_code == 202, ok.text
        # Before the body: a refused upload is answered with the headers alone.
        head = (f"POST /rooms/{room}/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.access_token}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {5 * MiB}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head)
            status, body = _read_response(sock)
        assert status == 429 and body["error"]["code"] == "rate_limited"
    finally:
        server.stop()


def _write_all_then_read(port: int, head: bytes, body: bytes) -> tuple[OSError | None, bytes]:
    """What a client that writes its whole request before reading sees (as httpx and browsers do)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    err: OSError | None = None
    try:
        sock.sendall(head + body)
    except OSError as exc:
        err = exc
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as exc:
        err = err or exc
    finally:
        sock.close()
    return err, data


@pytest.mark.parametrize("over", [1, 5 * MiB])
def test_refused_upload_is_read_to_its_end_not_reset(stack: Stack, people: dict[str, Any], over: int) -> None:
    """Closing on a client mid-send makes the kernel reset the connection, and on a real network the
    reset can overtake the 413 (the issue's "dropped without an answer"): the server reads the rest away."""
    limit = Settings.load(env=TEST_ENV, env_file=None).max_upload_bytes
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
    body = part + b"A" * (limit + over) + b"\r\n--b--\r\n"
    head = (f"POST /rooms/{people['room']}/files HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {people['owner'].access_token}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    err, data = _write_all_then_read(stack.server.port, head, body)
    assert err is None, err  # no reset: every byte was taken
    assert data.startswith(b"HTTP/1.1 413") and b"payload_too_large" in data, data[:300]
    assert b"connection: close" in data.lower()  # and then a clean close (EOF), not a hang


def test_refused_json_body_is_read_to_its_end_not_reset(stack: Stack, people: dict[str, Any]) -> None:
    limit = Settings.load(env=TEST_ENV, env_file=None).request_max_bytes
    body = b'{"body": "' + b"x" * (3 * limit) + b'"}'
    head = (f"POST /rooms/{people['room']}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {people['owner'].access_token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    err, data = _write_all_then_read(stack.server.port, head, body)
    assert err is None, err
    assert data.startswith(b"HTTP/1.1 413") and b"payload_too_large" in data, data[:300]


def test_expect_100_continue_gets_the_refusal_instead_of_the_go_ahead(stack: Stack, people: dict[str, Any]) -> None:
    """curl sends `Expect: 100-continue` for large bodies: a refusal is the final answer, and no
    `100 Continue` may follow it (the client then never sends the body)."""
    head = (f"POST /rooms/{people['room']}/files HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {people['owner'].access_token}\r\nExpect: 100-continue\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {11 * MiB}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):  # the server closes after its answer
            data += chunk
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"100 Continue" not in data, data
