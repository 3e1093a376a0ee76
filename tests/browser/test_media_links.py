"""Signed media links over HTTP: handed out to members only, bound to file, kind, user and time."""

from __future__ import annotations

import time

from app import file_links
from app.settings import Settings
from tests import samples
from tests.browser.stack import WebStack
from tests.env import TEST_ENV
from tests.factories import make_room, make_user


def _ready(web: WebStack, headers: dict[str, str], file_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if web.api.get(f"/files/{file_id}/meta", headers=headers).json()["status"] != "processing":
            return
        time.sleep(0.2)
    raise AssertionError("the worker did not process the upload")


def test_signed_links_are_member_only_and_bound(web: WebStack) -> None:
    settings = Settings.load(env=TEST_ENV, env_file=None)
    owner, member, outsider = make_user(web.api), make_user(web.api), make_user(web.api)
    room = make_room(web.api, owner, is_private=True, member_ids=[member.id])
    up = web.api.post(f"/rooms/{room['id']}/files", headers=owner.headers,
                      files={"file": ("p.png", samples.plain_png((200, 100)), "image/png")})
    assert up.status_code == 202, up.text
    fid = up.json()["id"]
    _ready(web, owner.headers, fid)

    # Only members get links; without a token it is the usual 401.
    assert web.api.get(f"/files/{fid}/url", headers=outsider.headers).status_code == 404
    assert web.api.get(f"/files/{fid}/url").status_code == 401
    links = web.api.get(f"/files/{fid}/url", headers=member.headers).json()
    assert set(links) == {"url", "thumbnail_url", "expires_at"}

    # The links work with no Authorization header, with the right type.
    full, thumb = web.api.get(links["url"]), web.api.get(links["thumbnail_url"])
    assert full.status_code == 200 and full.headers["content-type"] == "image/png"
    assert thumb.status_code == 200 and len(thumb.content) < len(full.content) * 4
    # Bearer downloads keep working as before.
    assert web.api.get(f"/files/{fid}", headers=owner.headers).status_code == 200

    # A file link is not a thumbnail link, nor a link to another file; no tampering.
    query = links["url"].split("?", 1)[1]
    assert web.api.get(f"/files/{fid}/thumbnail?{query}").status_code == 401
    other = web.api.post(f"/rooms/{room['id']}/files", headers=owner.headers,
                         files={"file": ("q.png", samples.plain_png((20, 10)), "image/png")}).json()["id"]
    assert web.api.get(f"/files/{other}?{query}").status_code == 401
    assert web.api.get(links["url"].replace(f"u={member.id}", f"u={owner.id}")).status_code == 401
    assert web.api.get(f"/files/{fid}?u={member.id}&exp=notanumber&sig=00").status_code == 401

    # Expired links are refused.
    past = file_links.sign(settings, file_id=fid, kind="file", user_id=member.id, exp=int(time.time()) - 1)
    assert web.api.get(past).status_code == 401
    # A link made for an outsider (never handed out) still needs membership at fetch time.
    stolen = file_links.links(settings, {"id": fid, "thumbnail_url": None}, outsider.id)["url"]
    assert web.api.get(stolen).status_code == 404
    # Removed from the room: the member's live link stops working at once.
    assert web.api.delete(f"/rooms/{room['id']}/members/{member.id}", headers=owner.headers).status_code == 204
    assert web.api.get(links["url"]).status_code == 404
