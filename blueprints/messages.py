"""Message routes (API.md "Messages"): send over HTTP (same accept path as the WebSocket) and history."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext.extensions.openapi import openapi
from sanic_ext.extensions.openapi.definitions import Component, RequestBody, Response

from app import messages, rooms
from app.errors import MessageNotFound, ValidationFailed
from app.pagination import parse_limit
from app.messages import CLIENT_ID_MAX
from app.settings import Settings
from app.validation import BIGINT_MAX, STORABLE_PATTERN, body
from blueprints.deps import JsonBody, NOT_BLANK_PATTERN, ErrorEnvelope, authenticated, bigint, body_schema, text_field

DEFAULT_MAX_CHARS = Settings.model_fields["message_max_chars"].default

bp = Blueprint("messages")


class SendMessage(BaseModel):
    """Body of POST /rooms/{id}/messages; body length and client_id are checked by the accept path."""

    model_config = ConfigDict(extra="ignore")

    body: str
    client_id: str | None = None


class SendMessageDoc(JsonBody):
    """Body of POST /rooms/{id}/messages as documented: what app.messages.validate_send accepts."""

    model_config = ConfigDict(title="SendMessage", json_schema_extra=body_schema)

    body: str = Field(max_length=DEFAULT_MAX_CHARS,
                      description=f"1-MESSAGE_MAX_CHARS (default {DEFAULT_MAX_CHARS}) characters, "
                                  "not only whitespace",
                      json_schema_extra=text_field(NOT_BLANK_PATTERN))
    client_id: Optional[str] = Field(None, min_length=1, max_length=CLIENT_ID_MAX,
                                     description="retry key: a resend with the same one returns the original",
                                     json_schema_extra=text_field(STORABLE_PATTERN))


# -- documentation schemas ----------------------------------------------------------

class FileOut(BaseModel):
    id: str
    name: str
    mime: str | None
    size: int
    url: str
    thumbnail_url: str | None
    expires_at: str | None
    expired: bool


class MessageOut(BaseModel):
    id: str
    room_id: str
    seq: int
    sender_id: str | None
    kind: Literal["text", "image", "file", "system"]
    body: str
    file: FileOut | None
    client_id: str | None
    created_at: str


class MessagePage(BaseModel):
    items: list[MessageOut]
    has_more: bool


def _resp(status: int, model: type[BaseModel], text: str) -> Response:
    return Response({"application/json": Component(model)}, status=str(status), description=text)  # type: ignore[arg-type]


_E401 = _resp(401, ErrorEnvelope, "invalid_token")
_E403 = _resp(403, ErrorEnvelope, "not_member: a public room the caller is not in")
_E404 = _resp(404, ErrorEnvelope, "room_not_found (also private rooms the caller is not in, malformed ids)")
_E422 = _resp(422, ErrorEnvelope, "validation_failed (details.fields)")


def _svc(request: Request) -> dict[str, Any]:
    ctx = request.app.ctx
    return {"redis": ctx.redis, "keys": ctx.keys, "settings": ctx.settings}


@bp.post("/rooms/<room_id>/messages")
@openapi.definition(
    summary="Send a message (201; 200 with the original for a retried client_id)", tag="messages",
    secured={"bearer": []}, body=RequestBody({"application/json": Component(SendMessageDoc)}, required=True),
    response=[_resp(201, MessageOut, "the new message"), _resp(200, MessageOut, "the original (retried client_id)"),
              _resp(400, ErrorEnvelope, "malformed_json"), _E401, _E403, _E404, _E422,
              _resp(429, ErrorEnvelope, "rate_limited (Retry-After)")])
@authenticated
async def send_message(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, SendMessage)
    msg, created = await messages.accept_message(**_svc(request), room_id=room_id, sender_id=request.ctx.user_id,
                                                 body=data.body, client_id=data.client_id)
    return json(msg, status=201 if created else 200)


@bp.get("/rooms/<room_id>/messages")
@openapi.definition(
    summary="History, ascending by seq: newest `limit`; with after the oldest after it; with both, between",
    tag="messages", secured={"bearer": []},
    parameter=[{"name": "before", "location": "query", **bigint(1, BIGINT_MAX, "seq, exclusive")},
               {"name": "after", "location": "query", **bigint(0, BIGINT_MAX - 1, "seq, exclusive")},
               {"name": "limit", "location": "query",
                **bigint(1, BIGINT_MAX, "default 50; any value above 200 is served as 200")}],
    response=[_resp(200, MessagePage, "a page of messages"), _E401, _E403, _E404, _E422])
@authenticated
async def list_messages(request: Request, room_id: str) -> HTTPResponse:
    before = messages.parse_seq_arg(request.args.get("before"), "before", 1)
    # History reads from after + 1, which must still be a bigint.
    after = messages.parse_seq_arg(request.args.get("after"), "after", 0, BIGINT_MAX - 1)
    limit = parse_limit(request)
    room = await rooms.require_member(room_id=room_id, user_id=request.ctx.user_id)
    items, has_more = await messages.history(**_svc(request), room_id=str(room.id), before=before, after=after,
                                             limit=limit)
    return json({"items": items, "has_more": has_more})


@bp.get("/rooms/<room_id>/messages/<seq>")
@openapi.definition(summary="One message by seq", tag="messages", secured={"bearer": []},
                    parameter=[{"name": "seq", "location": "path",
                                **bigint(0, BIGINT_MAX, "the message's seq (0 and unknown seqs: 404)")}],
                    response=[_resp(200, MessageOut, "the message"), _E401, _E403,
                              _resp(404, ErrorEnvelope, "room_not_found or message_not_found"),
                              _resp(422, ErrorEnvelope, "validation_failed: seq past 2^63-1")])
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
