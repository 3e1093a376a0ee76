"""Message routes (API.md "Messages"): send over HTTP (same accept path as the WebSocket), history,
and the lifecycle of a sent message (issue 12): edit, delete, reactions, the read marker."""

from __future__ import annotations

import urllib.parse
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext.extensions.openapi.types import String

from app import lifecycle, messages, reads, rooms
from app.errors import MessageNotFound, ValidationFailed
from app.ids import BIGINT_MAX, parse_bigint
from app.pagination import parse_limit
from app.schemas import (EditMessage, EditMessageDoc, MessageOut, MessagePage, ReadMarker, ReadMarkerBody, ReadState,
                         SendMessage, SendMessageDoc)
from app.validation import body
from blueprints.deps import authenticated, bigint, doc, query

bp = Blueprint("messages")

_E401 = (401, "invalid_token")
_E403 = (403, "not_member: a public room the caller is not in")
_E404 = (404, "room_not_found (also private rooms the caller is not in, malformed ids)")
_E422 = (422, "validation_failed (details.fields)")
_E429 = (429, "rate_limited (Retry-After): edits, deletes and reactions share RATE_CHANGES per user")
_MSG_404 = (404, "room_not_found, or message_not_found (no such seq, or 0, or not a number)")
_SEQ_422 = (422, "validation_failed: seq past 2^63-1")
_GONE = (409, "message_deleted: the message was deleted")
_SEQ = bigint("seq", 0, BIGINT_MAX, "the message's seq (0 and unknown seqs: 404)", location="path")
# What app.lifecycle.validate_emoji accepts: 1-32 characters, none of them whitespace or a
# control character (Python's str.isspace and the C0/C1 controls), except `.` and `..`: as a
# path segment they are dot segments, which HTTP clients resolve away before sending (no
# lookahead: Rust's regex has none).
_EMOJI_CHAR = r"[^\s\x00-\x1f\x7f-\x9f]"
_EMOJI_NOT_DOT = r"[^\s\x00-\x1f\x7f-\x9f.]"
EMOJI_PATTERN = (rf"^(?:{_EMOJI_NOT_DOT}|{_EMOJI_NOT_DOT}{_EMOJI_CHAR}|{_EMOJI_CHAR}{_EMOJI_NOT_DOT}"
                 rf"|{_EMOJI_CHAR}{{3,32}})$")
_EMOJI = query("emoji", String(minLength=1, maxLength=32, pattern=EMOJI_PATTERN),
               "the reaction, percent-encoded (👍 is %F0%9F%91%8D): 1-32 characters, no whitespace or controls",
               location="path")


def _svc(request: Request) -> dict[str, Any]:
    ctx = request.app.ctx
    return {"redis": ctx.redis, "keys": ctx.keys, "settings": ctx.settings}


async def path_seq(request: Request, room_id: str, seq: str) -> int:
    """The `{seq}` of a path, read like GET .../messages/{seq}: past a bigint is 422; not a
    number or below 1 is 404 message_not_found (after the room check: no room is confirmed
    to a caller who may not see it)."""
    try:
        n = int(seq)
    except ValueError:
        n = 0
    if n > BIGINT_MAX:  # a seq no bigint can hold: bad input, not a missing message
        raise ValidationFailed({"seq": f"must be at most {BIGINT_MAX}"})
    if n < 1:
        await rooms.require_member(room_id=room_id, user_id=request.ctx.user_id)
        raise MessageNotFound()
    return n




@bp.post("/rooms/<room_id>/messages")
@doc("Send a message (201; 200 with the original for a retried client_id)",
     (201, MessageOut, "the new message"), (200, MessageOut, "the original (retried client_id)"),
     errors=[(400, "malformed_json"), _E401, _E403, _E404,
             (422, "validation_failed (details.fields; reply_to: no such message in this room, or deleted)"),
             (429, "rate_limited (Retry-After)")],
     body=SendMessageDoc, tag="messages")
@authenticated
async def send_message(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, SendMessage)
    msg, created = await messages.accept_message(request.app.ctx.resources, room_id=room_id,
                                                 sender_id=request.ctx.user_id, body=data.body,
                                                 client_id=data.client_id, reply_to=data.reply_to)
    return json(msg, status=201 if created else 200)


@bp.get("/rooms/<room_id>/messages")
@doc("History, ascending by seq: newest `limit`; with after the oldest after it; with both, between",
     (200, MessagePage, "a page of messages"), errors=[_E401, _E403, _E404, _E422], tag="messages",
     params=[bigint("before", 1, BIGINT_MAX, "seq, exclusive"), bigint("after", 0, BIGINT_MAX - 1, "seq, exclusive"),
             bigint("limit", 1, BIGINT_MAX, "default 50; any value above 200 is served as 200")])
@authenticated
async def list_messages(request: Request, room_id: str) -> HTTPResponse:
    before = parse_bigint(request.args.get("before"), "before", 1)
    # History reads from after + 1, which must still be a bigint.
    after = parse_bigint(request.args.get("after"), "after", 0, BIGINT_MAX - 1)
    limit = parse_limit(request)
    room = await rooms.require_member(room_id=room_id, user_id=request.ctx.user_id)
    items, has_more = await messages.history(**_svc(request), room_id=str(room.id), before=before, after=after,
                                             limit=limit, viewer_id=request.ctx.user_id)
    return json({"items": items, "has_more": has_more})


@bp.get("/rooms/<room_id>/messages/<seq>")
@doc("One message by seq", (200, MessageOut, "the message"), tag="messages",
     errors=[_E401, _E403, (404, "room_not_found or message_not_found"), (422, "validation_failed: seq past 2^63-1")],
     params=[bigint("seq", 0, BIGINT_MAX, "the message's seq (0 and unknown seqs: 404)", location="path")])
@authenticated
async def get_message(request: Request, room_id: str, seq: str) -> HTTPResponse:
    room = await rooms.require_member(room_id=room_id, user_id=request.ctx.user_id)
    try:
        n = int(seq)
    except ValueError:
        raise MessageNotFound() from None
    if n > BIGINT_MAX:  # a seq no bigint can hold: bad input, not a missing message
        raise ValidationFailed({"seq": f"must be at most {BIGINT_MAX}"})
    msg = await messages.get_message(**_svc(request), room_id=str(room.id), seq=n,
                                     viewer_id=request.ctx.user_id) if n >= 1 else None
    if msg is None:
        raise MessageNotFound()
    return json(msg)


# -- the lifecycle of a sent message (issue 12) ------------------------------------------

@bp.patch("/rooms/<room_id>/messages/<seq>")
@doc("Edit a text message (its sender only); members get message_updated (change: edit)",
     (200, MessageOut, "the edited message"), body=EditMessageDoc, tag="messages", params=[_SEQ],
     errors=[(400, "malformed_json"), _E401,
             (403, "not_member, or forbidden (not the sender; not a text message)"), _MSG_404, _GONE,
             (422, "validation_failed: body (as for a send), or seq past 2^63-1"), _E429])
@authenticated
async def edit_message(request: Request, room_id: str, seq: str) -> HTTPResponse:
    data = body(request, EditMessage)
    n = await path_seq(request, room_id, seq)
    msg = await lifecycle.edit_message(request.app.ctx.resources, room_id=room_id, seq=n,
                                       user_id=request.ctx.user_id, body=data.body)
    return json(msg)


@bp.delete("/rooms/<room_id>/messages/<seq>")
@doc("Delete a message (its sender, or the room's owner or an admin): it stays as a tombstone; "
     "deleting again is harmless", (200, MessageOut, "the tombstone (deleted: true, body \"\")"),
     tag="messages", params=[_SEQ],
     errors=[_E401, (403, "not_member, or forbidden (not the sender, and not the owner or an admin)"), _MSG_404,
             _SEQ_422, _E429])
@authenticated
async def delete_message(request: Request, room_id: str, seq: str) -> HTTPResponse:
    n = await path_seq(request, room_id, seq)
    msg = await lifecycle.delete_message(request.app.ctx.resources, room_id=room_id, seq=n,
                                         user_id=request.ctx.user_id)
    return json(msg)


async def _react(request: Request, room_id: str, seq: str, emoji: str, add: bool) -> HTTPResponse:
    # Sanic passes path parameters still percent-encoded: a browser sends 👍 as %F0%9F%91%8D.
    # Decoded once (%2541 is the emoji "%41"); bytes that are not UTF-8 become U+FFFD.
    emoji = urllib.parse.unquote(emoji)
    lifecycle.validate_emoji(emoji)
    n = await path_seq(request, room_id, seq)
    msg = await lifecycle.react(request.app.ctx.resources, room_id=room_id, seq=n,
                                user_id=request.ctx.user_id, emoji=emoji, add=add)
    return json(msg)


_REACT_ERRORS = [_E401, _E403, _MSG_404, _GONE, (422, "validation_failed: emoji, or seq past 2^63-1"), _E429]


@bp.put("/rooms/<room_id>/messages/<seq>/reactions/<emoji>")
@doc("React with an emoji (idempotent: reacting twice changes nothing and sends no event)",
     (200, MessageOut, "the message with its reactions"), tag="messages", params=[_SEQ, _EMOJI],
     errors=[*_REACT_ERRORS, (409, "reaction_limit: REACTIONS_MAX_EMOJI distinct emoji on the message")])
@authenticated
async def add_reaction(request: Request, room_id: str, seq: str, emoji: str) -> HTTPResponse:
    return await _react(request, room_id, seq, emoji, True)


@bp.delete("/rooms/<room_id>/messages/<seq>/reactions/<emoji>")
@doc("Take one's reaction back (idempotent: removing one that is not there changes nothing)",
     (200, MessageOut, "the message with its reactions"), tag="messages", params=[_SEQ, _EMOJI],
     errors=_REACT_ERRORS)
@authenticated
async def remove_reaction(request: Request, room_id: str, seq: str, emoji: str) -> HTTPResponse:
    return await _react(request, room_id, seq, emoji, False)


@bp.post("/rooms/<room_id>/read")
@doc("Move the caller's read marker forward to seq (never back; past the last message reads as the last); "
     "the caller's connections get the read event when it moved", (200, ReadState, "the marker and counts"),
     body=ReadMarkerBody, tag="messages",
     errors=[(400, "malformed_json"), _E401, _E403, _E404, (422, "validation_failed: seq must be 0 to 2^63-1")])
@authenticated
async def mark_read(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, ReadMarker)
    state = await reads.mark_read(request.app.ctx.resources, room_id=room_id, user_id=request.ctx.user_id,
                                  username=request.ctx.claims.username, seq=data.seq)
    return json(state)
