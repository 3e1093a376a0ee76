"""Rooms and membership routes (API.md "Rooms and membership"): parse, call app.rooms/app.membership, render."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json
from sanic_ext.extensions.openapi import openapi
from sanic_ext.extensions.openapi.definitions import Component, RequestBody, Response
from sanic_ext.extensions.openapi.types import String

from app import membership, rooms
from app.membership import AddMember, ChangeRole
from app.pagination import parse_limit
from app.rooms import MAX_INITIAL_MEMBERS, CreateRoom, UpdateRoom
from app.validation import BIGINT_MAX, STORABLE_PATTERN, body
from blueprints.deps import JsonBody, ErrorEnvelope, authenticated, bigint, body_schema, text_field, trimmed_pattern

bp = Blueprint("rooms")

T = TypeVar("T")


# -- documentation schemas (what /docs shows; the services build the real bodies) ----

class RoomOut(BaseModel):
    """A room; my_role is the caller's (null in room_updated broadcasts: it differs per viewer)."""

    id: str
    name: str
    topic: str
    is_private: bool
    owner_id: str
    created_at: str
    member_count: int
    my_role: Literal["owner", "admin", "member"] | None


class MembershipOut(BaseModel):
    room_id: str
    user_id: str
    username: str
    role: Literal["owner", "admin", "member"]
    joined_at: str


class RoomPage(BaseModel):
    items: list[RoomOut]
    next_cursor: str | None


class MembershipPage(BaseModel):
    items: list[MembershipOut]
    next_cursor: str | None


class CreateRoomDoc(JsonBody):
    """Body of POST /rooms (what the server accepts: app.rooms.CreateRoom; other keys are ignored)."""

    model_config = ConfigDict(title="CreateRoom", json_schema_extra=body_schema)

    name: str = Field(description="1-64 characters once surrounding whitespace is stripped; no control characters",
                      json_schema_extra=text_field(trimmed_pattern(64)))
    topic: Optional[str] = Field("", description="0-256 characters once stripped; tabs and line breaks allowed, "
                                 "no other control characters; null means none",
                                 json_schema_extra=text_field(trimmed_pattern(256, allow_empty=True, multiline=True)))
    is_private: bool = False
    member_ids: list[str] = Field(default_factory=list, max_length=MAX_INITIAL_MEMBERS,
                                  description="user ids to add (404 user_not_found for an unknown one)",
                                  json_schema_extra={"items": {"type": "string", "pattern": STORABLE_PATTERN}})


class UpdateRoomDoc(JsonBody):
    """Body of PATCH /rooms/{id}: only the fields present change (name and is_private may not be null)."""

    model_config = ConfigDict(title="UpdateRoom", json_schema_extra=body_schema)

    name: str = Field(None, description="as for POST /rooms",  # type: ignore[assignment]
                      json_schema_extra=text_field(trimmed_pattern(64)))
    topic: Optional[str] = Field(None, description="as for POST /rooms; null clears it",
                                 json_schema_extra=text_field(trimmed_pattern(256, allow_empty=True, multiline=True)))
    is_private: bool = Field(None)  # type: ignore[assignment]


class AddMemberDoc(JsonBody):
    model_config = ConfigDict(title="AddMember", json_schema_extra=body_schema)

    user_id: str = Field(description="the user to add (404 user_not_found when unknown)",
                         json_schema_extra=text_field(STORABLE_PATTERN))


class ChangeRoleDoc(JsonBody):
    model_config = ConfigDict(title="ChangeRole", json_schema_extra=body_schema)

    role: Literal["admin", "member"]


_PAGE_PARAMS = [
    {"name": "limit", "location": "query",
     **bigint(1, BIGINT_MAX, "page size, default 50; any value above 200 is served as 200")},
    {"name": "cursor", "schema": str, "location": "query", "allowEmptyValue": True,
     "description": "next_cursor of the previous page, as given (anything else is 422)"},
]


def _doc(summary: str, ok: tuple[int, type[BaseModel] | None, str], *errors: tuple[int, str],
         body_model: type[BaseModel] | None = None, params: list[dict[str, Any]] | None = None,
         also: list[tuple[int, type[BaseModel], str]] | None = None) -> Callable[[T], T]:
    """One route's OpenAPI entry: summary, JSON body, success and error responses (envelope)."""
    by_status: dict[int, list[str]] = {401: ["invalid_token: missing, invalid or expired token"]}
    if body_model is not None:
        by_status[400] = ["malformed_json: the body is not a JSON object"]
    for status, text in errors:
        by_status.setdefault(status, []).append(text)
    # OpenAPI keys responses by status string.
    responses = [Response({"application/json": Component(model)} if model else {}, status=str(status),
                          description=text) for status, model, text in [ok, *(also or [])]]
    responses += [Response({"application/json": Component(ErrorEnvelope)}, status=str(status),
                           description="; ".join(texts)) for status, texts in sorted(by_status.items())]
    return openapi.definition(
        summary=summary, tag="rooms", secured={"bearer": []}, parameter=params or None, response=responses,
        body=RequestBody({"application/json": Component(body_model)}, required=True) if body_model else None)


_ROOM_404 = (404, "room_not_found (also a private room the caller is not in, or a malformed id)")
_ROOM_403 = (403, "not_member (public room, caller not a member) or forbidden (role too low)")
_INVALID = (422, "validation_failed (details.fields)")
_LIST_422 = (422, "validation_failed: bad limit, cursor or scope")


def _svc(request: Request) -> dict[str, Any]:
    """The connections a service call needs."""
    return {"redis": request.app.ctx.redis, "keys": request.app.ctx.keys}


# -- rooms ---------------------------------------------------------------------------

@bp.post("/rooms")
@_doc("Create a room (the caller becomes its owner; member_ids become members)", (201, RoomOut, "the new room"),
      (404, "user_not_found: a member_ids entry is unknown (no room is created)"), _INVALID, body_model=CreateRoomDoc)
@authenticated
async def create_room(request: Request) -> HTTPResponse:
    data = body(request, CreateRoom)
    room = await rooms.create_room(**_svc(request), settings=request.app.ctx.settings,
                                   owner_id=request.ctx.user_id, data=data)
    return json(room, status=201)


@bp.get("/rooms")
@_doc("List the caller's rooms (scope=joined) or the public directory (scope=public), newest first",
      (200, RoomPage, "a page of rooms"), _LIST_422,
      params=[{"name": "scope", "schema": String(enum=["joined", "public"]), "location": "query",
               "allowEmptyValue": True, "description": "joined (default) | public"},
              {"name": "q", "schema": String(pattern=STORABLE_PATTERN), "location": "query", "allowEmptyValue": True,
               "description": "case-insensitive substring of the name; % and _ are literal"}, *_PAGE_PARAMS])
@authenticated
async def list_rooms(request: Request) -> HTTPResponse:
    args = request.args
    result = await rooms.list_rooms(user_id=request.ctx.user_id, scope=args.get("scope") or "joined",
                                    q=args.get("q") or "", limit=parse_limit(request), cursor=args.get("cursor"))
    return json(result)


@bp.get("/rooms/<room_id>")
@_doc("A room (members; anyone for a public room)", (200, RoomOut, "the room"), _ROOM_404)
@authenticated
async def get_room(request: Request, room_id: str) -> HTTPResponse:
    return json(await rooms.get_room(room_id=room_id, user_id=request.ctx.user_id))


@bp.patch("/rooms/<room_id>")
@_doc("Change name, topic or privacy (owner, admin); absent fields stay", (200, RoomOut, "the updated room"),
      _ROOM_403, _ROOM_404, _INVALID, body_model=UpdateRoomDoc)
@authenticated
async def update_room(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, UpdateRoom)
    room = await rooms.update_room(**_svc(request), room_id=room_id, user_id=request.ctx.user_id, data=data)
    return json(room)


@bp.delete("/rooms/<room_id>")
@_doc("Delete a room with its messages (owner)", (204, None, "deleted"), _ROOM_403, _ROOM_404)
@authenticated
async def delete_room(request: Request, room_id: str) -> HTTPResponse:
    await rooms.delete_room(**_svc(request), room_id=room_id, user_id=request.ctx.user_id)
    return empty()


@bp.post("/rooms/<room_id>/join")
@_doc("Join a public room (joining again is harmless)", (200, MembershipOut, "the caller's membership"),
      (403, "banned"), (404, "room_not_found (also any private room the caller is not in)"))
@authenticated
async def join_room(request: Request, room_id: str) -> HTTPResponse:
    m = await rooms.join_room(**_svc(request), settings=request.app.ctx.settings,
                              room_id=room_id, user_id=request.ctx.user_id)
    return json(m)


@bp.post("/rooms/<room_id>/leave")
@_doc("Leave a room: an owner hands over to the oldest admin, else the oldest member; the last one out "
      "deletes it", (204, None, "left"), (404, "room_not_found, or not_member when not in the room"))
@authenticated
async def leave_room(request: Request, room_id: str) -> HTTPResponse:
    await rooms.leave_room(**_svc(request), room_id=room_id, user_id=request.ctx.user_id)
    return empty()


# -- members -------------------------------------------------------------------------

@bp.get("/rooms/<room_id>/members")
@_doc("The room's members in join order (members only)", (200, MembershipPage, "a page of memberships"),
      _ROOM_403, _ROOM_404, _LIST_422, params=_PAGE_PARAMS)
@authenticated
async def list_members(request: Request, room_id: str) -> HTTPResponse:
    result = await membership.list_members(room_id=room_id, user_id=request.ctx.user_id,
                                           limit=parse_limit(request), cursor=request.args.get("cursor"))
    return json(result)


@bp.post("/rooms/<room_id>/members")
@_doc("Add a member, lifting a ban (owner, admin)", (201, MembershipOut, "the new membership"),
      _ROOM_403, _ROOM_404, (404, "user_not_found"), _INVALID, body_model=AddMemberDoc,
      also=[(200, MembershipOut, "already a member: unchanged")])
@authenticated
async def add_member(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, AddMember)
    m, created = await membership.add_member(**_svc(request), settings=request.app.ctx.settings,
                                             room_id=room_id, actor_id=request.ctx.user_id,
                                             user_id=data.user_id)
    return json(m, status=201 if created else 200)


@bp.patch("/rooms/<room_id>/members/<user_id>")
@_doc("Make a member an admin or a plain member (owner; the owner's own role is fixed)",
      (200, MembershipOut, "the membership"),
      (403, "not_member, or forbidden (caller not the owner, or the target is the owner)"), _ROOM_404,
      (404, "user_not_found, or not_member (the target is not in the room)"),
      (422, "validation_failed: role must be admin or member"), body_model=ChangeRoleDoc)
@authenticated
async def change_role(request: Request, room_id: str, user_id: str) -> HTTPResponse:
    data = body(request, ChangeRole)
    m = await membership.change_role(**_svc(request), room_id=room_id, actor_id=request.ctx.user_id,
                                     user_id=user_id, role=data.role)
    return json(m)


@bp.delete("/rooms/<room_id>/members/<user_id>")
@_doc("Kick, or with ban=true ban, a user (owner, admin; not the owner, a peer admin or oneself)",
      (204, None, "removed"),
      (403, "not_member, or forbidden (role too low, the owner, a peer admin, oneself)"), _ROOM_404,
      (404, "user_not_found, or not_member (kicking someone not in the room)"),
      (422, "validation_failed: ban must be true or false"),
      params=[{"name": "ban", "schema": bool, "location": "query", "allowEmptyValue": True,
               "description": "true: keep them out until re-added (default false); works on non-members too"}])
@authenticated
async def remove_member(request: Request, room_id: str, user_id: str) -> HTTPResponse:
    ban = membership.parse_ban(request.args.get("ban"))
    await membership.remove_member(**_svc(request), room_id=room_id, actor_id=request.ctx.user_id,
                                   user_id=user_id, ban=ban)
    return empty()
