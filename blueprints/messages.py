"""Message routes (API.md "Messages"): send over HTTP (same accept path as the WebSocket) and history."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from app import messages, rooms
from app.errors import MessageNotFound, ValidationFailed
from app.ids import BIGINT_MAX, parse_bigint
from app.pagination import parse_limit
from app.schemas import MessageOut, MessagePage, SendMessage, SendMessageDoc
from app.validation import body
from blueprints.deps import authenticated, bigint, doc

bp = Blueprint("messages")

_E401 = (401, "invalid_token")
_E403 = (403, "not_member: a public room the caller is not in")
_E404 = (404, "room_not_found (also private rooms the caller is not in, malformed ids)")
_E422 = (422, "validation_failed (details.fields)")


def _svc(request: Request) -> dict[str, Any]:
    ctx = request.app.ctx
    return {"redis": ctx.redis, "keys": ctx.keys, "settings": ctx.settings}


@bp.post("/rooms/<room_id>/messages")
@doc("Send a message (201; 200 with the original for a retried client_id)",
     (201, MessageOut, "the new message"), (200, MessageOut, "the original (retried client_id)"),
     errors=[(400, "malformed_json"), _E401, _E403, _E404, _E422, (429, "rate_limited (Retry-After)")],
     body=SendMessageDoc, tag="messages")
@authenticated
async def send_message(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, SendMessage)
    msg, created = await messages.accept_message(request.app.ctx.resources, room_id=room_id,
                                                 sender_id=request.ctx.user_id, body=data.body,
                                                 client_id=data.client_id)
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
                                             limit=limit)
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
    msg = await messages.get_message(**_svc(request), room_id=str(room.id), seq=n) if n >= 1 else None
    if msg is None:
        raise MessageNotFound()
    return json(msg)
