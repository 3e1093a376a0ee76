"""Rooms and membership routes (API.md "Rooms and membership"): parse, call app.rooms/app.membership, render."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json
from sanic_ext.extensions.openapi.types import String

from app import membership, reads, rooms
from app.pagination import parse_limit
from app.schemas import (AddMember, AddMemberDoc, ChangeRole, ChangeRoleDoc, CreateRoom, CreateRoomDoc, MembershipOut,
                         MembershipPage, RoomOut, RoomPage, UpdateRoom, UpdateRoomDoc)
from app.validation import STORABLE_PATTERN, body
from blueprints.deps import authenticated, doc, page_params, query

bp = Blueprint("rooms")

# Every route here is behind the Bearer token; the ones with a body also parse JSON.
_E401 = (401, "invalid_token: missing, invalid or expired token")
_E400 = (400, "malformed_json: the body is not a JSON object")
_ROOM_404 = (404, "room_not_found (also a private room the caller is not in, or a malformed id)")
_ROOM_403 = (403, "not_member (public room, caller not a member) or forbidden (role too low)")
_INVALID = (422, "validation_failed (details.fields)")
_LIST_422 = (422, "validation_failed: bad limit, cursor or scope")


def _svc(request: Request) -> dict[str, Any]:
    """The connections a service call needs."""
    return {"redis": request.app.ctx.redis, "keys": request.app.ctx.keys}


async def _read_state(request: Request, items: list[dict[str, Any]]) -> None:
    """The caller's last_seq, last_version, last_read_seq, unread_count and mention_count on
    the rooms they are a member of (issue 12: the sidebar's badges); others stay as they are."""
    await reads.with_read_state(request.app.ctx.resources, request.ctx.user_id, request.ctx.claims.username, items)


# -- rooms ---------------------------------------------------------------------------

@bp.post("/rooms")
@doc("Create a room (the caller becomes its owner; member_ids become members)", (201, RoomOut, "the new room"),
     errors=[_E400, _E401, (404, "user_not_found: a member_ids entry is unknown (no room is created)"), _INVALID],
     body=CreateRoomDoc, tag="rooms")
@authenticated
async def create_room(request: Request) -> HTTPResponse:
    data = body(request, CreateRoom)
    room = await rooms.create_room(**_svc(request), settings=request.app.ctx.settings,
                                   owner_id=request.ctx.user_id, data=data)
    return json(room, status=201)


@bp.get("/rooms")
@doc("List the caller's rooms (scope=joined) or the public directory (scope=public), newest first; rooms the "
     "caller is in also carry last_seq, last_version, last_read_seq, unread_count and mention_count",
     (200, RoomPage, "a page of rooms"), errors=[_E401, _LIST_422], tag="rooms",
     params=[query("scope", String(enum=["joined", "public"]), "joined (default) | public"),
             query("q", String(pattern=STORABLE_PATTERN), "case-insensitive substring of the name; % and _ are literal"),
             *page_params()])
@authenticated
async def list_rooms(request: Request) -> HTTPResponse:
    args = request.args
    result = await rooms.list_rooms(user_id=request.ctx.user_id, scope=args.get("scope") or "joined",
                                    q=args.get("q") or "", limit=parse_limit(request), cursor=args.get("cursor"))
    await _read_state(request, result["items"])
    return json(result)


@bp.get("/rooms/<room_id>")
@doc("A room (members; anyone for a public room); for a member also last_seq, last_version, last_read_seq, "
     "unread_count and mention_count", (200, RoomOut, "the room"), errors=[_E401, _ROOM_404], tag="rooms")
@authenticated
async def get_room(request: Request, room_id: str) -> HTTPResponse:
    room = await rooms.get_room(room_id=room_id, user_id=request.ctx.user_id)
    await _read_state(request, [room])
    return json(room)


@bp.patch("/rooms/<room_id>")
@doc("Change name, topic or privacy (owner, admin); absent fields stay", (200, RoomOut, "the updated room"),
     errors=[_E400, _E401, _ROOM_403, _ROOM_404, _INVALID], body=UpdateRoomDoc, tag="rooms")
@authenticated
async def update_room(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, UpdateRoom)
    room = await rooms.update_room(**_svc(request), room_id=room_id, user_id=request.ctx.user_id, data=data)
    return json(room)


@bp.delete("/rooms/<room_id>")
@doc("Delete a room with its messages (owner)", (204, None, "deleted"), errors=[_E401, _ROOM_403, _ROOM_404],
     tag="rooms")
@authenticated
async def delete_room(request: Request, room_id: str) -> HTTPResponse:
    await rooms.delete_room(**_svc(request), room_id=room_id, user_id=request.ctx.user_id)
    return empty()


@bp.post("/rooms/<room_id>/join")
@doc("Join a public room (joining again is harmless)", (200, MembershipOut, "the caller's membership"),
     errors=[_E401, (403, "banned"), (404, "room_not_found (also any private room the caller is not in)")], tag="rooms")
@authenticated
async def join_room(request: Request, room_id: str) -> HTTPResponse:
    m = await rooms.join_room(**_svc(request), settings=request.app.ctx.settings,
                              room_id=room_id, user_id=request.ctx.user_id)
    return json(m)


@bp.post("/rooms/<room_id>/leave")
@doc("Leave a room: an owner hands over to the oldest admin, else the oldest member; the last one out "
     "deletes it", (204, None, "left"), errors=[_E401, (404, "room_not_found, or not_member when not in the room")],
     tag="rooms")
@authenticated
async def leave_room(request: Request, room_id: str) -> HTTPResponse:
    await rooms.leave_room(**_svc(request), room_id=room_id, user_id=request.ctx.user_id)
    return empty()


# -- members -------------------------------------------------------------------------

@bp.get("/rooms/<room_id>/members")
@doc("The room's members in join order (members only)", (200, MembershipPage, "a page of memberships"),
     errors=[_E401, _ROOM_403, _ROOM_404, _LIST_422], params=page_params(), tag="rooms")
@authenticated
async def list_members(request: Request, room_id: str) -> HTTPResponse:
    result = await membership.list_members(room_id=room_id, user_id=request.ctx.user_id,
                                           limit=parse_limit(request), cursor=request.args.get("cursor"))
    return json(result)


@bp.post("/rooms/<room_id>/members")
@doc("Add a member, lifting a ban (owner, admin)", (201, MembershipOut, "the new membership"),
     (200, MembershipOut, "already a member: unchanged"),
     errors=[_E400, _E401, _ROOM_403, _ROOM_404, (404, "user_not_found"), _INVALID], body=AddMemberDoc, tag="rooms")
@authenticated
async def add_member(request: Request, room_id: str) -> HTTPResponse:
    data = body(request, AddMember)
    m, created = await membership.add_member(**_svc(request), settings=request.app.ctx.settings,
                                             room_id=room_id, actor_id=request.ctx.user_id,
                                             user_id=data.user_id)
    return json(m, status=201 if created else 200)


@bp.patch("/rooms/<room_id>/members/<user_id>")
@doc("Make a member an admin or a plain member (owner; the owner's own role is fixed)",
     (200, MembershipOut, "the membership"),
     errors=[_E400, _E401, (403, "not_member, or forbidden (caller not the owner, or the target is the owner)"),
             _ROOM_404, (404, "user_not_found, or not_member (the target is not in the room)"),
             (422, "validation_failed: role must be admin or member")], body=ChangeRoleDoc, tag="rooms")
@authenticated
async def change_role(request: Request, room_id: str, user_id: str) -> HTTPResponse:
    data = body(request, ChangeRole)
    m = await membership.change_role(**_svc(request), room_id=room_id, actor_id=request.ctx.user_id,
                                     user_id=user_id, role=data.role)
    return json(m)


@bp.delete("/rooms/<room_id>/members/<user_id>")
@doc("Kick, or with ban=true ban, a user (owner, admin; not the owner, a peer admin or oneself)",
     (204, None, "removed"),
     errors=[_E401, (403, "not_member, or forbidden (role too low, the owner, a peer admin, oneself)"), _ROOM_404,
             (404, "user_not_found, or not_member (kicking someone not in the room)"),
             (422, "validation_failed: ban must be true or false")], tag="rooms",
     params=[query("ban", bool, "true: keep them out until re-added (default false); works on non-members too")])
@authenticated
async def remove_member(request: Request, room_id: str, user_id: str) -> HTTPResponse:
    ban = membership.parse_ban(request.args.get("ban"))
    await membership.remove_member(**_svc(request), room_id=room_id, actor_id=request.ctx.user_id,
                                   user_id=user_id, ban=ban)
    return empty()
