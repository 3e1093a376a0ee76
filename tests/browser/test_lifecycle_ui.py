"""Issue 12 in the web client: edits, deletes, reactions, replies, unread badges and search,
as two people (and one person's second tab) see them in real browsers against the real stack."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from playwright.sync_api import expect

from tests.browser.stack import Person, WebStack
from tests.factories import make_room, unique

XSS = "<img src=x onerror=alert(1)>"


def post(web: WebStack, person: Person, room_id: str, body: str, **extra: Any) -> dict[str, Any]:
    r = web.api.post(f"/rooms/{room_id}/messages", json={"body": body, **extra}, headers=person.user.headers)
    assert r.status_code == 201, r.text
    return r.json()


def msg(p: Person, seq: int) -> Any:
    return p.page.locator(f"#messages li.msg[data-seq='{seq}']")


def act(p: Person, seq: int, action: str) -> None:
    """Use one entry of a message's menu (it shows on hover, as for a mouse user)."""
    m = msg(p, seq)
    m.hover()
    m.locator(f".msg-action[data-action={action}]").click()


def reload_into(p: Person, room_name: str) -> None:
    p.page.reload()
    p.page.wait_for_selector("body[data-socket=online]")
    p.open_room(room_name)


def test_edit_and_delete_reach_the_other_person_live(person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    room = make_room(web.api, alice.user, name="Edits", member_ids=[bob.user.id])
    first = post(web, alice, room["id"], "see you at 10")
    theirs = post(web, bob, room["id"], "ok " + XSS)
    for p in (alice, bob):
        reload_into(p, "Edits")
        expect(msg(p, theirs["seq"])).to_be_visible()

    # Only the sender may edit; a plain member may not delete someone else's message.
    msg(bob, first["seq"]).hover()
    assert msg(bob, first["seq"]).locator(".msg-action").evaluate_all("els => els.map(e => e.dataset.action)") == ["react", "reply"]

    # Escape leaves the message as it was.
    act(alice, first["seq"], "edit")
    box = msg(alice, first["seq"]).locator("textarea.edit-input")
    expect(box).to_be_focused()
    box.fill("never mind")
    box.press("Escape")
    expect(box).to_have_count(0)
    expect(msg(alice, first["seq"]).locator(".msg-body")).to_have_text("see you at 10")

    # Enter saves: bob sees the new text and the mark without reloading.
    act(alice, first["seq"], "edit")
    box.fill("see you at 11 @" + bob.user.username)
    box.press("Enter")
    for p in (alice, bob):
        expect(msg(p, first["seq"]).locator(".msg-body")).to_have_text("see you at 11 @" + bob.user.username)
        expect(msg(p, first["seq"]).locator(".edited")).to_have_text("(edited)")
    # The edit mentions bob now: highlighted for him, the name styled for both.
    expect(msg(bob, first["seq"])).to_have_class(re.compile(r"\bmention-me\b"))
    expect(msg(alice, first["seq"]).locator(".mention")).to_have_text("@" + bob.user.username)

    # The owner deletes bob's message (moderation), then her own: tombstones on both sides.
    act(alice, theirs["seq"], "delete")
    act(alice, first["seq"], "delete")
    for p in (alice, bob):
        for seq in (first["seq"], theirs["seq"]):
            expect(msg(p, seq).locator(".msg-tombstone")).to_have_text("message deleted")
            expect(msg(p, seq).locator(".msg-body")).to_have_count(0)
    assert bob.alerts == [] and alice.alerts == []
    # A reload shows the same (the state comes back from the server, not the page's memory).
    reload_into(bob, "Edits")
    expect(msg(bob, first["seq"]).locator(".msg-tombstone")).to_have_text("message deleted")


def test_reactions_toggle_and_count_for_everyone(person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    room = make_room(web.api, alice.user, name="Reactions", member_ids=[bob.user.id])
    m = post(web, alice, room["id"], "ship it?")
    for p in (alice, bob):
        reload_into(p, "Reactions")

    act(alice, m["seq"], "react")
    msg(alice, m["seq"]).locator(".picker-emoji").first.click()  # the thumbs up
    thumbs = "\U0001F44D"

    def chip(p: Person, emoji: str) -> Any:
        return msg(p, m["seq"]).locator(f"button.reaction[data-emoji='{emoji}']")

    expect(chip(bob, thumbs)).to_have_text(thumbs + "1")
    expect(chip(bob, thumbs)).to_have_attribute("aria-pressed", "false")
    expect(chip(alice, thumbs)).to_have_attribute("aria-pressed", "true")
    # bob's click adds his: two, highlighted for him only.
    chip(bob, thumbs).click()
    for p in (alice, bob):
        expect(chip(p, thumbs)).to_have_text(thumbs + "2")
    expect(chip(bob, thumbs)).to_have_class(re.compile(r"\bmine\b"))
    # A second click takes it back.
    chip(bob, thumbs).click()
    expect(chip(alice, thumbs)).to_have_text(thumbs + "1")
    expect(chip(bob, thumbs)).to_have_attribute("aria-pressed", "false")
    # Any emoji can be typed into the picker.
    msg(bob, m["seq"]).locator(".reaction-add").click()
    picker_input = msg(bob, m["seq"]).locator(".picker-input")
    picker_input.fill("\U0001F984")
    picker_input.press("Enter")
    expect(chip(alice, "\U0001F984")).to_have_text("\U0001F9841")
    assert msg(alice, m["seq"]).locator("button.reaction:not(.reaction-add)").count() == 2
    # After a reload the counts and the viewer's own marks come from the server.
    reload_into(alice, "Reactions")
    expect(chip(alice, thumbs)).to_have_attribute("aria-pressed", "true")
    expect(chip(alice, "\U0001F984")).to_have_attribute("aria-pressed", "false")


def test_unread_badges_divider_and_read_in_every_tab(person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    quiet = make_room(web.api, alice.user, name="Quiet", member_ids=[bob.user.id])
    busy = make_room(web.api, alice.user, name="Busy", member_ids=[bob.user.id])
    post(web, bob, busy["id"], "my own message is never unread")
    post(web, alice, quiet["id"], "nothing here")
    bob.page.reload()
    bob.page.wait_for_selector("body[data-socket=online]")
    bob.open_room("Quiet")
    tab2 = person(user=bob.user)  # bob's second tab, on the room list

    for p in (bob, tab2):
        expect(p.page.locator(".room-item", has_text="Busy").locator(".badge")).to_have_count(0)
    post(web, alice, busy["id"], "first unread")
    post(web, alice, busy["id"], f"@{bob.user.username} can you look?")
    for p in (bob, tab2):
        item = p.page.locator(".room-item", has_text="Busy")
        expect(item.locator(".unread-badge")).to_have_text("2")
        expect(item.locator(".mention-badge")).to_have_text("@")
    # A freshly loaded page has the same counts, from the server (room list and hello).
    tab2.page.reload()
    tab2.page.wait_for_selector("body[data-socket=online]")
    fresh = tab2.page.locator(".room-item", has_text="Busy")
    expect(fresh.locator(".unread-badge")).to_have_text("2")
    expect(fresh.locator(".mention-badge")).to_have_text("@")

    bob.open_room("Busy")
    # The line sits above the first unread message, the mention is highlighted, and reading
    # clears the badges here and in the other tab (the server's `read` event).
    divider = bob.page.locator("#messages li.new-divider")
    expect(divider).to_have_count(1)
    assert divider.evaluate("d => d.nextElementSibling.querySelector('.msg-body').textContent") == "first unread"
    expect(bob.page.locator("#messages li.mention-me .msg-body")).to_have_text(f"@{bob.user.username} can you look?")
    for p in (bob, tab2):
        expect(p.page.locator(".room-item", has_text="Busy").locator(".badge")).to_have_count(0)
    # The marker is on the server: a fresh page has no badge either.
    tab2.page.reload()
    tab2.page.wait_for_selector("body[data-socket=online]")
    tab2.page.locator(".room-item", has_text="Busy").wait_for()
    time.sleep(0.5)
    expect(tab2.page.locator(".room-item", has_text="Busy").locator(".badge")).to_have_count(0)


def test_search_finds_a_message_and_highlights_it_safely(person: Callable[..., Person], web: WebStack) -> None:
    alice = person(display_name="Alice")
    word = unique("budget")
    room = make_room(web.api, alice.user, name="Finance")
    make_room(web.api, alice.user, name="Elsewhere")
    hit = post(web, alice, room["id"], f"the {word} spreadsheet <b>{XSS}</b>")
    for i in range(60):  # the hit is not on the first page of the room
        post(web, alice, room["id"], f"filler {i}")
    alice.page.reload()
    alice.page.wait_for_selector("body[data-socket=online]")
    alice.open_room("Elsewhere")

    alice.page.fill("#search-q", word)
    result = alice.page.locator("#search-results .search-hit")
    expect(result).to_have_count(1)
    expect(result.locator(".hit-room")).to_have_text("# Finance")
    expect(result.locator("mark")).to_have_text(word)
    snippet = result.locator(".hit-snippet").text_content() or ""
    assert word in snippet and "<b>" in snippet  # the markup is text, not elements
    assert alice.page.locator("#search-results b, #search-results img").count() == 0

    result.click()
    expect(alice.page.locator("#room-name")).to_have_text("Finance")
    target = msg(alice, hit["seq"])
    expect(target).to_be_in_viewport()
    expect(target).to_have_class(re.compile(r"\bflash\b"))
    alice.page.locator("#search-q").press("Escape")
    expect(alice.page.locator("#room-list .room-item")).to_have_count(2)
    assert alice.alerts == []


def test_a_reply_quotes_its_original_until_it_is_deleted(person: Callable[..., Person], web: WebStack) -> None:
    alice, bob = person(display_name="Alice"), person(display_name="Bob")
    room = make_room(web.api, alice.user, name="Replies", member_ids=[bob.user.id])
    original = post(web, alice, room["id"], "Which day suits everyone?")
    for i in range(3):
        post(web, alice, room["id"], f"more {i}")
    for p in (alice, bob):
        reload_into(p, "Replies")

    act(bob, original["seq"], "reply")
    expect(bob.page.locator("#reply-bar")).to_be_visible()
    expect(bob.page.locator("#reply-name")).to_have_text("Alice")
    expect(bob.page.locator("#reply-excerpt")).to_have_text("Which day suits everyone?")
    bob.send("Thursday works for me")
    expect(bob.page.locator("#reply-bar")).to_be_hidden()
    for p in (alice, bob):
        reply = p.page.locator("#messages li.msg[data-seq]", has_text="Thursday works for me")
        expect(reply.locator(".quote .quote-name")).to_have_text("Alice")
        expect(reply.locator(".quote .quote-text")).to_have_text("Which day suits everyone?")
    # The quote leads to the original.
    alice.page.locator("#messages li.msg", has_text="Thursday works").locator(".quote").click()
    expect(msg(alice, original["seq"])).to_have_class(re.compile(r"\bflash\b"))
    # Once the original is deleted, the reply says so (live, and after a reload).
    act(alice, original["seq"], "delete")
    for p in (alice, bob):
        reply = p.page.locator("#messages li.msg[data-seq]", has_text="Thursday works for me")
        expect(reply.locator(".quote .quote-text")).to_have_text("deleted message")
    reload_into(bob, "Replies")
    expect(bob.page.locator("#messages li.msg", has_text="Thursday works").locator(".quote-text")).to_have_text("deleted message")


# Wraps the page's WebSocket so a test can cut it and keep it down (each new one then goes to
# a path that refuses the handshake) without stopping the server the others use.
WS_GATE = """(() => {
  const Real = window.WebSocket;
  window.__ws = [];
  window.__blockWs = false;
  window.WebSocket = class extends Real {
    constructor(url, ...rest) {
      super(window.__blockWs ? String(url).replace("/ws?", "/ws-blocked?") : url, ...rest);
      window.__ws.push(this);
    }
  };
})();"""


def test_changes_made_while_offline_arrive_with_the_reconnect_sync(person: Callable[..., Person], web: WebStack) -> None:
    alice = person(display_name="Alice")
    bob = person(display_name="Bob", login=False)
    bob.context.add_init_script(WS_GATE)
    bob.login()
    room = make_room(web.api, alice.user, name="Away", member_ids=[bob.user.id])
    m1, m2, m3 = (post(web, alice, room["id"], t) for t in ("plan A", "plan B", "plan C"))
    reload_into(bob, "Away")
    expect(msg(bob, m3["seq"])).to_be_visible()

    bob.page.evaluate("() => { window.__blockWs = true; window.__ws.forEach((s) => s.close()); }")
    bob.page.wait_for_selector("body:not([data-socket=online])")
    h = alice.user.headers
    base = f"/rooms/{room['id']}/messages"
    assert web.api.patch(f"{base}/{m1['seq']}", json={"body": "plan A, revised"}, headers=h).status_code == 200
    assert web.api.put(f"{base}/{m2['seq']}/reactions/%F0%9F%8E%89", headers=h).status_code == 200
    assert web.api.delete(f"{base}/{m3['seq']}", headers=h).status_code == 200
    post(web, alice, room["id"], "plan D")
    time.sleep(0.5)
    assert msg(bob, m1["seq"]).locator(".msg-body").text_content() == "plan A"  # really offline

    bob.page.evaluate("() => { window.__blockWs = false; }")
    bob.page.wait_for_selector("body[data-socket=online]", timeout=40000)
    # One sync with after_seq and after_version brings the new message and the older ones' changes.
    expect(msg(bob, m1["seq"]).locator(".msg-body")).to_have_text("plan A, revised")
    expect(msg(bob, m1["seq"]).locator(".edited")).to_have_count(1)
    expect(msg(bob, m2["seq"]).locator("button.reaction[data-emoji='\U0001F389']")).to_have_text("\U0001F3891")
    expect(msg(bob, m3["seq"]).locator(".msg-tombstone")).to_have_text("message deleted")
    expect(bob.page.locator("#messages li.msg[data-seq] .msg-body").last).to_have_text("plan D")
