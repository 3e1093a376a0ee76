"""The web client in a real browser: what two or three people see, against the real stack."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import asyncpg
import httpx
import pytest
import redis as redis_sync
from PIL import Image, ImageDraw

from app.store.keys import Keys
from tests.browser.stack import SCREENSHOTS, Person, WebStack
from tests.env import REDIS_PREFIX, REDIS_URL, RUN_ID, TEST_DB_URL
from tests.factories import make_room, make_user, unique
from tests.support import ROOT, ServerProc

XSS = "<img src=x onerror=alert(1)>"


def landscape_png(size: tuple[int, int] = (900, 600)) -> bytes:
    """A small picture (sky, sun, mountains) so the screenshot shows what a photo looks like."""
    w, hgt = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(hgt):  # dusk sky: deep blue to warm orange
        t = y / hgt
        draw.line([(0, y), (w, y)], fill=(int(40 + 215 * t), int(60 + 110 * t), int(140 - 60 * t)))
    draw.ellipse([w * 0.62, hgt * 0.30, w * 0.62 + 110, hgt * 0.30 + 110], fill=(255, 214, 120))
    draw.polygon([(0, hgt), (0, hgt * 0.62), (w * 0.22, hgt * 0.38), (w * 0.45, hgt * 0.66), (w * 0.7, hgt * 0.44),
                  (w, hgt * 0.7), (w, hgt)], fill=(52, 48, 92))
    draw.polygon([(0, hgt), (0, hgt * 0.8), (w * 0.35, hgt * 0.62), (w * 0.6, hgt * 0.82), (w * 0.85, hgt * 0.66),
                  (w, hgt * 0.78), (w, hgt)], fill=(28, 26, 56))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def post(web: WebStack, person: Person, room_id: str, body: str) -> dict[str, Any]:
    r = web.api.post(f"/rooms/{room_id}/messages", json={"body": body}, headers=person.user.headers)
    assert r.status_code == 201, r.text
    return r.json()


def wait_bodies(p: Person, expected: list[str], timeout: float = 20.0) -> None:
    """Until the last len(expected) shown messages are exactly `expected` (with a clear failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.bodies()[-len(expected):] == expected:
            return
        time.sleep(0.1)
    assert p.bodies()[-len(expected):] == expected


def test_two_people_chat_live_with_typing(person: Callable[..., Person], web: WebStack) -> None:
    alice = person(display_name="Alice")
    bob = person(display_name="Bob")
    page = alice.page
    # alice creates a private room and invites bob by username search.
    page.click("#new-room-btn")
    page.fill("#create-form input[name=name]", "Design review")
    page.fill("#create-form input[name=topic]", "Mockups and feedback")
    page.check("#create-form input[name=is_private]")
    page.fill("#create-invite", bob.user.username[:8])
    page.locator("#create-results .result", has_text=bob.user.username).click()
    assert page.locator("#create-chips .chip", has_text="Bob").count() == 1
    page.click("#create-form button[type=submit]")
    page.wait_for_selector("#room-header:not([hidden])")
    assert page.text_content("#room-name") == "Design review"

    # The room appears in bob's sidebar without a reload (member_joined over /ws).
    bob.page.locator(".room-item", has_text="Design review").wait_for()
    bob.open_room("Design review")

    # Typing shows on the other side, then the message itself, live both ways.
    page.locator("#message-input").press_sequentially("hi bo", delay=30)
    bob.page.locator("#typing", has_text="Alice is typing").wait_for()
    page.locator("#message-input").press_sequentially("b, welcome", delay=10)
    page.locator("#message-input").press("Enter")
    wait_bodies(bob, ["hi bob, welcome"])
    bob.send("thanks alice\nsecond line")  # Enter sends; the newline came from fill()
    wait_bodies(alice, ["hi bob, welcome", "thanks alice\nsecond line"])
    wait_bodies(bob, ["hi bob, welcome", "thanks alice\nsecond line"])
    # Shift+Enter is a newline, not a send.
    box = page.locator("#message-input")
    box.fill("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    assert box.input_value() == "line one\nline two"
    box.press("Enter")
    wait_bodies(bob, ["hi bob, welcome", "thanks alice\nsecond line", "line one\nline two"])
    # Display names label the senders; pending marks are gone once acknowledged.
    assert "Alice" in bob.page.locator("#messages .sender").all_text_contents()
    assert page.locator("#messages li.pending").count() == 0
    # Esc closes a dialog.
    page.click("#members-btn")
    page.locator("#members-list .member", has_text=bob.user.username).wait_for()
    page.keyboard.press("Escape")
    assert not page.locator("#members-dialog").is_visible()


def test_scroll_back_reaches_flushed_history(person: Callable[..., Person], web: WebStack) -> None:
    alice = person(display_name="Alice")
    room = make_room(web.api, alice.user, name="Archive")
    for i in range(1, 121):
        post(web, alice, room["id"], f"old {i}")
    # A real flush moves the first 120 to PostgreSQL (and trims them from the cache).
    out = subprocess.run([sys.executable, "-m", "app.ops.cli", "flush"], cwd=ROOT, env={**_env(web)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    flushed = redis_sync.Redis.from_url(REDIS_URL).get(Keys(REDIS_PREFIX).room_flushed(room["id"]))
    assert int(flushed or 0) == 120
    # (a thread of its own: Playwright's sync API keeps an event loop running in this one)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, _db_count(room["id"])).result(30) == 120
    for i in range(121, 151):
        post(web, alice, room["id"], f"new {i}")

    alice.page.reload()
    alice.page.wait_for_selector("body[data-socket=online]")
    alice.open_room("Archive")
    wait_bodies(alice, [f"new {i}" for i in range(141, 151)])
    assert len(alice.seqs()) == 50  # the newest page only
    # Scroll up until the beginning: every page of history, from cache and database.
    for _ in range(10):
        alice.page.eval_on_selector("#timeline", "el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
        time.sleep(0.4)
        if alice.page.locator("#history-status", has_text="beginning of Archive").count():
            break
    alice.page.locator("#history-status", has_text="beginning of Archive").wait_for()
    assert alice.seqs() == list(range(1, 151))
    assert alice.bodies() == [f"old {i}" for i in range(1, 121)] + [f"new {i}" for i in range(121, 151)]


def _env(web: WebStack) -> dict[str, str]:
    import os

    return {**os.environ, **web.env}


async def _db_count(room_id: str) -> int:
    conn = await asyncpg.connect(TEST_DB_URL)
    try:
        return await conn.fetchval("SELECT count(*) FROM messages WHERE room_id = $1::uuid", room_id)
    finally:
        await conn.close()


@pytest.mark.timeout(180)
def test_messages_sent_while_the_server_is_down_show_once_in_order(person: Callable[..., Person],
                                                                   web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    carol = make_user(web.api)
    room = make_room(web.api, alice.user, name="Ops", member_ids=[bob.user.id, carol.id])
    for p in (alice, bob):
        p.page.reload()
        p.page.wait_for_selector("body[data-socket=online]")
        p.open_room("Ops")
    bob.send("before the cut")
    wait_bodies(alice, ["before the cut"])

    def while_down() -> None:
        # Both pages notice the drop and say so.
        for p in (alice, bob):
            p.page.locator("#banner.offline").wait_for()
        # bob keeps typing: his messages wait, marked pending.
        for i in range(1, 4):
            bob.send(f"offline {i}")
        bob.page.locator("#messages li.pending", has_text="offline 3").wait_for()
        assert bob.page.locator("#messages li.pending .send-state", has_text="Sending").count() == 3
        # Meanwhile carol talks through another server process: alice can only learn of
        # these by catching up (sync) when she is back.
        other = ServerProc(web.env, name=f"web-server-b-{RUN_ID}").wait_ready()
        try:
            with httpx.Client(base_url=other.base_url, timeout=10) as c:
                for i in range(1, 3):
                    r = c.post(f"/rooms/{room['id']}/messages", json={"body": f"carol {i}"},
                               headers={"Authorization": f"Bearer {_token(c, carol)}"})
                    assert r.status_code == 201, r.text
        finally:
            other.stop()

    web.restart_server(while_down)
    for p in (alice, bob):
        p.page.wait_for_selector("body[data-socket=online]", timeout=40000)
        p.page.wait_for_selector("#banner", state="hidden", timeout=20000)
    # Every message exactly once, in seq order, in both browsers; nothing left pending.
    for p in (alice, bob):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(p.bodies()) < 6:
            time.sleep(0.1)
        bodies = p.bodies()
        assert bodies, p.page.inner_text("body")
        assert sorted(bodies) == sorted(["before the cut", "carol 1", "carol 2", "offline 1", "offline 2", "offline 3"])
        assert [b for b in bodies if b.startswith("offline")] == ["offline 1", "offline 2", "offline 3"]
        seqs = p.seqs()
        assert seqs == list(range(seqs[0], seqs[0] + 6))
        assert p.page.locator("#messages li.pending").count() == 0
    assert alice.bodies() == bob.bodies()
    # The server agrees: six messages, no duplicate.
    hist = web.api.get(f"/rooms/{room['id']}/messages", headers=alice.user.headers).json()["items"]
    assert [m["body"] for m in hist] == alice.bodies()


def _token(c: httpx.Client, user: Any) -> str:
    r = c.post("/auth/login", json={"username": user.username, "password": user.password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_images_show_as_thumbnails_and_rejections_reach_the_uploader_only(
        person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice Martin"), person(display_name="Bob Chen")
    make_room(web.api, alice.user, name="Photos", topic="Holiday pictures", member_ids=[bob.user.id])
    other = make_room(web.api, alice.user, name="Random", member_ids=[bob.user.id])
    post(web, alice, other["id"], "lunch at noon?")
    for p in (alice, bob):
        p.page.reload()
        p.page.wait_for_selector("body[data-socket=online]")
        p.open_room("Photos")
    bob.send("Did you bring the camera?")
    wait_bodies(alice, ["Did you bring the camera?"])
    alice.send("Yes! Here is the view from the top")
    alice.page.set_input_files("#file-input", files=[{
        "name": "summit.png", "mimeType": "image/png", "buffer": landscape_png()}])
    for p in (alice, bob):
        thumb = p.page.locator("#messages li.msg[data-seq] img.thumb").last
        thumb.wait_for()
        p.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
        src = thumb.get_attribute("src") or ""
        assert re.search(r"^/files/[0-9a-f-]{36}/thumbnail\?u=[0-9a-f-]{36}&exp=\d+&sig=[0-9a-f]{64}$", src), src
    # Clicking the thumbnail opens the full image.
    bob.page.locator("#messages img.thumb").last.click()
    full = bob.page.locator("#image-full")
    bob.page.wait_for_function("img => img.complete && img.naturalWidth === 900", arg=full.element_handle())
    bob.page.keyboard.press("Escape")
    bob.send("Wow, beautiful! Is that the north ridge?")
    wait_bodies(alice, ["Wow, beautiful! Is that the north ridge?"])
    alice.send("It is. We got there just before sunset ☀️")
    wait_bodies(bob, ["It is. We got there just before sunset ☀️"])
    time.sleep(1.1)  # the server passes on one typing event per second and connection
    bob.page.locator("#message-input").press_sequentially("Next time I", delay=20)
    alice.page.locator("#typing", has_text="Bob Chen is typing").wait_for()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    alice.page.mouse.move(900, 700)
    alice.page.screenshot(path=str(SCREENSHOTS / "main.png"))
    bob.page.locator("#message-input").fill("")

    # A text file claiming to be a PNG: rejected after processing, told to alice only.
    alice.page.set_input_files("#file-input", files=[{
        "name": "cat.png", "mimeType": "image/png", "buffer": b"rm -rf / --no-preserve-root\n" * 3}])
    rejected = alice.page.locator("#messages li.upload", has_text="Rejected")
    rejected.wait_for()
    reason = rejected.text_content() or ""
    assert "cat.png" in reason and "claims to be image" in reason
    alice.send("(that was the wrong file)")
    wait_bodies(bob, ["(that was the wrong file)"])
    assert bob.page.locator("#messages li.upload").count() == 0
    assert "cat.png" not in (bob.page.text_content("#messages") or "")
    # A signed link does not work for someone else's file id, nor once tampered with.
    src = alice.page.locator("#messages img.thumb").last.get_attribute("src") or ""
    assert web.api.get(src).status_code == 200
    assert web.api.get(src[:-1] + ("0" if src[-1] != "0" else "1")).status_code == 401


def test_a_kicked_member_loses_the_room(person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    make_room(web.api, alice.user, name="Team", member_ids=[bob.user.id])
    lounge = make_room(web.api, alice.user, name="Lounge", member_ids=[bob.user.id])
    for p in (alice, bob):
        p.page.reload()
        p.page.wait_for_selector("body[data-socket=online]")
        p.open_room("Team")
    alice.send("see you all")
    wait_bodies(bob, ["see you all"])
    alice.page.click("#members-btn")
    row = alice.page.locator("#members-list .member", has_text=bob.user.username)
    row.locator("button", has_text="Kick").click()
    row.wait_for(state="detached")
    alice.page.keyboard.press("Escape")
    # bob: the room leaves the sidebar and its timeline is closed with a notice.
    bob.page.locator(".room-item", has_text="Team").wait_for(state="detached")
    bob.page.locator("#empty-text", has_text="no longer a member").wait_for()
    assert not bob.page.locator("#timeline").is_visible()
    # alice goes on talking in Team; bob's page stays live (Lounge) but never shows Team's.
    alice.send("secret plans after the kick")
    post(web, alice, lounge["id"], "still here in the lounge")
    bob.page.locator(".room-item", has_text="still here in the lounge").wait_for()
    assert "secret plans" not in (bob.page.content() or "")


def test_user_strings_render_as_text(person: Callable[..., Person], web: WebStack) -> None:
    alice = person(display_name="Alice")
    bob = person(display_name=XSS)
    bob.page.locator("#me-name").wait_for()
    assert bob.page.text_content("#me-name") == XSS
    room_name = "<script>alert(2)</script><b>x</b>"
    page = alice.page
    page.click("#new-room-btn")
    page.fill("#create-form input[name=name]", room_name)
    page.fill("#create-form input[name=topic]", "<i onmouseover=alert(3)>topic</i>")
    page.fill("#create-invite", bob.user.username)
    page.locator("#create-results .result", has_text=bob.user.username).click()
    page.click("#create-form button[type=submit]")
    page.wait_for_selector("#room-header:not([hidden])")
    alice.send(XSS)
    bob.page.locator(".room-item", has_text=room_name).wait_for()
    bob.open_room(room_name)
    wait_bodies(bob, [XSS])
    bob.send("hello " + XSS)
    wait_bodies(alice, [XSS, "hello " + XSS])
    # alice sees bob's display name as the sender, as text.
    alice.page.locator("#messages .sender", has_text=XSS).first.wait_for()
    for p in (alice, bob):
        assert p.page.text_content("#room-name") == room_name
        assert p.page.locator("#messages img:not(.thumb), #messages script, #messages b, .room-list b, #room-name b").count() == 0
        assert p.page.locator("img[src=x]").count() == 0
        assert p.alerts == []


def test_page_policy_and_phone_layout(person: Callable[..., Person], web: WebStack) -> None:
    r = web.api.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline
    assert web.api.get("/static/js/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))

    phone = person(display_name="Pat", viewport={"width": 390, "height": 800})
    make_room(web.api, phone.user, name="Pocket")
    phone.page.reload()
    phone.page.wait_for_selector("body[data-socket=online]")
    assert phone.page.locator(".sidebar").is_visible()
    phone.open_room("Pocket")
    assert not phone.page.locator(".sidebar").is_visible()
    phone.send("typed on a phone")
    wait_bodies(phone, ["typed on a phone"])
    width = phone.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling
    phone.page.click("#back-btn")
    assert phone.page.locator(".sidebar").is_visible()
    assert phone.outside == []


def test_a_reused_refresh_token_logs_the_user_out(person: Callable[..., Person], web: WebStack) -> None:
    alice = person(display_name="Alice")
    stored = alice.page.evaluate("() => JSON.parse(sessionStorage.getItem('chat.session')).refresh_token")
    # A thief who copied alice's refresh token uses it first (it rotates for them) ...
    thief = web.api.post("/auth/refresh", json={"refresh_token": stored})
    assert thief.status_code == 200, thief.text
    # ... so the page's own refresh is the second use: the server calls it theft and revokes
    # the session; the page logs out and says why. (The page is made to think its access
    # token is about to expire, as 15 minutes later; a reload picks that up.)
    alice.page.evaluate("""() => {
        const s = JSON.parse(sessionStorage.getItem('chat.session'));
        s.expires_at = Date.now() + 5000;
        sessionStorage.setItem('chat.session', JSON.stringify(s));
    }""")
    alice.page.reload()
    alice.page.locator("#auth-message", has_text="logged out").wait_for()
    assert "used twice" in (alice.page.text_content("#auth-message") or "")
    # The thief's tokens died with the session.
    assert web.api.get("/users/me", headers={"Authorization": "Bearer " + thief.json()["access_token"]}).status_code == 401
    assert alice.page.locator("#login-form").is_visible()
    assert alice.page.evaluate("() => sessionStorage.getItem('chat.session')") is None


def test_docs_render_with_no_request_leaving_the_machine(person: Callable[..., Person], web: WebStack) -> None:
    p = person(login=False)
    p.page.goto("/docs")
    p.page.locator(".swagger-ui .info .title", has_text="Chat server API").wait_for()
    p.page.locator(".opblock-summary-path", has_text="/files/{file_id}/url").first.wait_for()
    assert p.outside == []


def test_files_download_and_then_show_as_expired(person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    make_room(web.api, alice.user, name="Docs", member_ids=[bob.user.id])
    for p in (alice, bob):
        p.page.reload()
        p.page.wait_for_selector("body[data-socket=online]")
        p.open_room("Docs")
    notes = b"Agenda\n1. budget\n2. hiring\n" * 20
    alice.page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": notes}])
    link = bob.page.locator("#messages li.msg[data-seq] a.file", has_text="notes.txt")
    link.wait_for()
    with bob.page.expect_download() as dl:
        link.click()
    download = dl.value
    assert download.suggested_filename == "notes.txt"
    assert Path(download.path()).read_bytes() == notes
    # Drag and drop works as well as the attach button.
    alice.page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["minutes of the meeting\\n"], "minutes.txt", { type: "text/plain" }));
        const pane = document.getElementById("room-pane");
        for (const type of ["dragenter", "dragover", "drop"]) {
            pane.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
        }
    }""")
    bob.page.locator("#messages li.msg[data-seq] a.file", has_text="minutes.txt").wait_for()
    assert alice.page.locator("#drop-overlay").is_hidden()
    # The file expires (the sweep deletes its bytes): its message says so, with no link.
    file_id = _file_id(web, alice, "notes.txt")
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, _expire(file_id, web.env)).result(30) == 1
    for p in (alice, bob):
        p.page.reload()
        p.page.wait_for_selector("body[data-socket=online]")
        p.page.locator("#messages .file.expired", has_text="notes.txt").wait_for()
        assert "expired" in (p.page.text_content("#messages .file.expired") or "")
        assert p.page.locator("#messages a.file", has_text="notes.txt").count() == 0
        assert p.page.locator("#messages a.file", has_text="minutes.txt").count() == 1


def _file_id(web: WebStack, p: Person, name: str) -> str:
    rooms = web.api.get("/rooms?scope=joined", headers=p.user.headers).json()["items"]
    room = next(r for r in rooms if r["name"] == "Docs")
    items = web.api.get(f"/rooms/{room['id']}/messages", headers=p.user.headers).json()["items"]
    return next(m["file"]["id"] for m in items if m["file"] and m["file"]["name"] == name)


async def _expire(file_id: str, env: dict[str, str]) -> int:
    from datetime import datetime, timedelta, timezone

    from app import files
    from app.db import close_db, init_db
    from app.settings import Settings
    from models.file import File

    settings = Settings.load(env=env, env_file=None)
    await init_db(settings.database_url, 2)
    try:
        await File.filter(id=file_id).update(expires_at=datetime.now(timezone.utc) - timedelta(minutes=1))
        return await files.sweep_expired(settings=settings)
    finally:
        await close_db()


def test_a_refused_send_can_be_retried_or_discarded(person: Callable[..., Person], web: WebStack) -> None:
    alice = person(display_name="Alice")
    make_room(web.api, alice.user, name="Drafts")
    alice.page.reload()
    alice.page.wait_for_selector("body[data-socket=online]")
    alice.open_room("Drafts")
    alice.send("short one")
    wait_bodies(alice, ["short one"])
    alice.send("x" * 1200)  # over this server's MESSAGE_MAX_CHARS (1000)
    failed = alice.page.locator("#messages li.pending .send-state.failed")
    failed.wait_for()
    assert "Not sent" in (failed.text_content() or "")
    failed.locator("button", has_text="Retry").click()
    failed.wait_for()  # refused again, still offered
    failed.locator("button", has_text="Discard").click()
    alice.page.locator("#messages li.pending").wait_for(state="detached")
    alice.send("after the discard")
    wait_bodies(alice, ["short one", "after the discard"])
    assert alice.seqs() == [1, 2]  # the refused send consumed no seq


def test_browse_join_settings_roles_and_leave(person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    tag = unique("club")
    make_room(web.api, alice.user, name=f"Book {tag}", topic="One novel a month", is_private=False)
    make_room(web.api, alice.user, name=f"Secret {tag}", is_private=True)
    alice.page.reload()
    alice.page.wait_for_selector("body[data-socket=online]")
    alice.open_room(f"Book {tag}")
    # bob finds the public room by search (the private one is not listed) and joins it.
    bob.page.click("#browse-btn")
    bob.page.fill("#browse-q", tag)
    item = bob.page.locator("#browse-list .browse-item", has_text=f"Book {tag}")
    item.wait_for()
    assert bob.page.locator("#browse-list .browse-item", has_text=f"Secret {tag}").count() == 0
    item.locator("button", has_text="Join").click()
    bob.page.wait_for_selector("#room-header:not([hidden])")
    assert bob.page.text_content("#room-name") == f"Book {tag}"
    assert not bob.page.locator("#settings-btn").is_visible()  # a member has no settings
    bob.send("hello club")
    wait_bodies(alice, ["hello club"])
    # alice (owner) renames the room and sets its topic: bob sees it live.
    alice.page.click("#settings-btn")
    alice.page.fill("#settings-form input[name=name]", f"Readers {tag}")
    alice.page.fill("#settings-form input[name=topic]", "Two novels a month")
    alice.page.click("#settings-form button[type=submit]")
    bob.page.locator("#room-name", has_text=f"Readers {tag}").wait_for()
    bob.page.locator("#room-topic", has_text="Two novels a month").wait_for()
    bob.page.locator(".room-item", has_text=f"Readers {tag}").wait_for()
    # alice makes bob an admin: his Settings button appears.
    alice.page.click("#members-btn")
    row = alice.page.locator("#members-list .member", has_text=bob.user.username)
    row.locator("select").select_option("admin")
    bob.page.locator("#settings-btn").wait_for()
    assert row.locator("select").input_value() == "admin"
    alice.page.keyboard.press("Escape")
    # bob leaves: the room leaves his sidebar.
    bob.page.click("#leave-btn")
    bob.page.locator(".room-item", has_text=f"Readers {tag}").wait_for(state="detached")
    bob.page.locator("#empty-text", has_text="You left").wait_for()
    members = web.api.get(f"/rooms?scope=joined", headers=bob.user.headers).json()["items"]
    assert all(r["name"] != f"Readers {tag}" for r in members)
