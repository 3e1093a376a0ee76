"""Every shape the API speaks: request and response models, and beside each response model
the renderer that turns a row into its dict.

One definition per shape: the OpenAPI document (/docs/openapi.json) is built from these
models and the wire is built by these renderers, and tests/app/test_schemas.py renders real
rows and validates each renderer's output against its model with extra='forbid' and every
field required, so the two cannot drift.

Invariants:
- Renderers are plain dict builders: history and events are hot, so no pydantic validation
  runs per rendered row at runtime (the test does it once).
- This module imports only models/, pydantic and small helpers (serialize, validation,
  settings), never a service: services and blueprints both import it, and it stays the
  bottom of the graph (which is what breaks the files <-> messages cycle).
- A response model's field order is its renderer's key order (the same JSON bytes as before).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

import orjson
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr,
                      StringConstraints, field_validator)
from typing_extensions import TypeAliasType

from app.serialize import iso
from app.settings import Settings
from app.validation import STORABLE_PATTERN
from models.file import File
from models.room import Membership, Role, Room
from models.user import User

# A room created with thousands of members at once is a bulk import, not a chat call.
MAX_INITIAL_MEMBERS = 1000
CLIENT_ID_MAX = 64  # a message's (and an upload's) retry key
DEFAULT_MAX_CHARS = Settings.model_fields["message_max_chars"].default
BIGINT_MAX = 2**63 - 1  # app.ids.BIGINT_MAX (this module imports no service): seqs are PostgreSQL bigints


# == what the OpenAPI document declares about inputs (schemathesis holds us to it) ======

# A trimmed text of 1..n characters without control characters (names, display names): the
# server strips surrounding whitespace (str.strip) and then checks length and controls.
_CTRL = r"\x00-\x1f\x7f"
# A topic may have tabs and line breaks.
_CTRL_TOPIC = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"


def trimmed_pattern(max_chars: int, *, allow_empty: bool = False, multiline: bool = False) -> str:
    """The regex of what survives the server's strip + length + control-character checks."""
    ctrl = _CTRL_TOPIC if multiline else _CTRL
    core = rf"[^\s{ctrl}](?:[^{ctrl}]{{0,{max_chars - 2}}}[^\s{ctrl}])?"
    if allow_empty:
        core = f"(?:{core})?"
    return rf"^\s*{core}\s*$"


# Not whitespace only (message bodies: length is counted before the strip).
NOT_BLANK_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"

StorableText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
# Any JSON value whose strings PostgreSQL can store (the door refuses the others at any depth).
StorableValue = TypeAliasType(  # type: ignore[misc]
    "StorableValue",
    Union[StorableText, int, float, bool, None, list["StorableValue"], dict[str, "StorableValue"]])  # noqa: UP007


def body_schema(schema: dict[str, Any]) -> None:
    """json_schema_extra of a body model: optional fields without a misleading `default: null`."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            prop.pop("default")  # optional, not "null is a fine value" unless the type says so


def text_field(pattern: str, **extra: Any) -> dict[str, Any]:
    """json_schema_extra for a string field: its pattern (and any other keywords)."""
    return {"pattern": pattern, **extra}


# The documents say what the door (app/validation.parse_object) refuses in every string: NUL
# and lone surrogates. Only in the schema: pydantic's regex engine cannot name surrogates.
_STORABLE = text_field(STORABLE_PATTERN)


class JsonBody(BaseModel):
    """Base of every documented JSON request body: unknown keys are ignored, but their strings
    pass the door too, and the schema says so (additionalProperties: StorableValue)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, StorableValue] = Field(init=False)  # type: ignore[assignment]


# == errors ===============================================================================

class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorEnvelope(BaseModel):
    """Every error body: {"error": {"code", "message", "details"}}."""

    error: ErrorDetail


# == users and sessions ===================================================================

class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    created_at: str = Field(description="ISO 8601 UTC with milliseconds and Z")


def user_out(user: User) -> dict[str, Any]:
    """The API's user object: {id, username, display_name, created_at}; never the hash."""
    return {"id": str(user.id), "username": user.username, "display_name": user.display_name,
            "created_at": iso(user.created_at)}


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: Optional[str]


# Rendered by app.auth.TokenPair.body().
class TokenPairOut(BaseModel):

    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int = Field(description="access token lifetime in seconds")


Username = Annotated[str, StringConstraints(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
# No control characters: they render badly, and PostgreSQL refuses NUL outright.
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                               pattern=r"^[^\x00-\x1f\x7f]+$")]


def _display_name_schema(schema: dict[str, Any]) -> None:
    """Document what the server checks after stripping, not DisplayName's own (pre-strip) keywords."""
    prop = schema["properties"]["display_name"]
    prop["anyOf"] = [{"type": "string"}, {"type": "null"}]
    body_schema(schema)


class RegisterBody(JsonBody):
    model_config = ConfigDict(json_schema_extra=_display_name_schema)

    username: Username = Field(description="3-32 of A-Z a-z 0-9 _ . -; unique case-insensitively")
    password: str = Field(min_length=8, max_length=128, json_schema_extra=_STORABLE)
    display_name: Optional[DisplayName] = Field(
        default=None, description="1-64 characters once surrounding whitespace is stripped, no control "
        "characters; defaults to the username", json_schema_extra=text_field(trimmed_pattern(64)))


class LoginBody(JsonBody):
    model_config = ConfigDict(json_schema_extra=body_schema)

    # Loose limits: a name or password that cannot exist simply fails as invalid_credentials;
    # the caps only bound the hashing work a request can ask for.
    username: str = Field(min_length=1, max_length=256, json_schema_extra=_STORABLE)
    password: str = Field(min_length=1, max_length=1024, json_schema_extra=_STORABLE)


class RefreshBody(JsonBody):
    model_config = ConfigDict(json_schema_extra=body_schema)

    refresh_token: str = Field(min_length=1, max_length=4096, json_schema_extra=_STORABLE)


# == files ================================================================================

class FileOut(BaseModel):
    id: str
    name: str
    mime: str | None
    size: int
    url: str
    thumbnail_url: str | None
    expires_at: str | None
    expired: bool


def file_out(f: File) -> dict[str, Any]:
    """The `file` object of a message (API.md), used by every reader of messages."""
    fid = str(f.id)
    is_image = bool(f.mime and f.mime.startswith("image/"))
    return {
        "id": fid,
        "name": f.name,
        "mime": f.mime,
        "size": f.size,
        "url": f"/files/{fid}",
        "thumbnail_url": f"/files/{fid}/thumbnail" if is_image and f.thumbnail_path else None,
        "expires_at": iso(f.expires_at),
        "expired": f.expired,
    }


class FileMetaOut(FileOut):
    """The file object of a message, plus its processing state."""

    room_id: str
    status: Literal["processing", "ready", "rejected", "expired"]
    reason: str | None = Field(description="why it was rejected")
    client_id: str | None
    seq: int | None = Field(description="seq of the file's message once ready")
    created_at: str


def file_meta_out(f: File, *, viewer_id: str | None) -> dict[str, Any]:
    """`GET /files/{id}/meta` and `file_status`: the file object plus its processing state.

    The rejection `reason` is the uploader's business (it can echo what they sent): other
    members see null.
    """
    own = viewer_id is not None and f.uploader_id is not None and str(f.uploader_id) == str(viewer_id)
    return {**file_out(f), "room_id": str(f.room_id), "status": f.status, "reason": f.reason if own else None,
            "client_id": f.client_id, "seq": f.message_seq, "created_at": iso(f.created_at)}


# Rendered by app.file_links.links.
class MediaLinksOut(BaseModel):
    """Short-lived links a browser can load without the Bearer header (MEDIA_URL_TTL_S)."""

    url: str = Field(description="/files/{id}?u=&exp=&sig= : the bytes")
    thumbnail_url: str | None = Field(description="/files/{id}/thumbnail?u=&exp=&sig= ; null without a thumbnail")
    expires_at: str = Field(description="when both links stop working")


# The multipart form of POST /rooms/{id}/files (documentation only: app/upload parses it).
class UploadForm(BaseModel):

    # Form fields are text (or absent): none of them can be null.
    model_config = ConfigDict(json_schema_extra=body_schema)

    file: bytes = Field(min_length=1, description="the file (not empty); its type is sniffed from the bytes "
                        "(MAX_UPLOAD_BYTES, default 10 MiB)")
    body: str = Field(default=None, max_length=DEFAULT_MAX_CHARS,  # type: ignore[assignment]
                      description="text of the file's message (may be empty)", json_schema_extra=_STORABLE)
    client_id: str = Field(default=None, max_length=CLIENT_ID_MAX,  # type: ignore[assignment]
                           description="retry key, as for messages; empty means none", json_schema_extra=_STORABLE)


# == messages =============================================================================

# A message. The accept path (app/messages.py) renders it from the same keys, in this order,
# as JSON text; `message_out` renders a PostgreSQL row. (Comments, not docstrings, on the
# response models that had none: a docstring is the schema's description in /docs.)
class ReplyQuote(BaseModel):
    """The original a reply answers, as it is now (deleted: excerpt is "")."""

    seq: int
    sender_id: str | None
    excerpt: str
    deleted: bool


class ReactionOut(BaseModel):
    """One emoji on a message: who reacted (first-reacted order) and whether the viewer did
    (`me` is absent in live events, which every member shares: compare user_ids)."""

    emoji: str
    count: int
    user_ids: list[str]
    me: bool = False


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
    edited_at: str | None = None
    deleted: bool = False
    version: int = Field(0, description="the room's change counter at this message's last change (0: never changed)")
    reply_to: ReplyQuote | None = None
    mentions: list[str] = Field(default_factory=list, description="lowercased usernames @mentioned in the body")
    reactions: list[ReactionOut] = Field(default_factory=list)


def message_view(msg: dict[str, Any], viewer_id: str | None = None) -> dict[str, Any]:
    """A message as stored (Redis JSON, a live event, a rendered row) as the API shows it.

    Fills the lifecycle fields that stored JSON may lack (entries written before them;
    Lua's cjson cannot encode an empty array, so scripts drop empty `reactions` and
    `mentions`), and marks the viewer's own reactions (`me`). Mutates and returns `msg`."""
    if "version" not in msg:
        msg["version"] = 0
    if "deleted" not in msg:
        msg["deleted"] = False
    if "edited_at" not in msg:
        msg["edited_at"] = None
    if "reply_to" not in msg:
        msg["reply_to"] = None
    if not isinstance(msg.get("mentions"), list):
        msg["mentions"] = []
    reactions = msg.get("reactions")
    if not isinstance(reactions, list):
        msg["reactions"] = []
    elif viewer_id is not None:
        for r in reactions:
            r["me"] = viewer_id in r.get("user_ids", ())
    return msg


def message_out(row: dict[str, Any], f: File | None) -> dict[str, Any]:
    """A `messages` row (with its file row, when it has one) as the API's message object."""
    return {
        "id": str(row["id"]), "room_id": str(row["room_id"]), "seq": int(row["seq"]),
        "sender_id": str(row["sender_id"]) if row["sender_id"] is not None else None,
        "kind": row["kind"], "body": row["body"], "file": file_out(f) if f is not None else None,
        "client_id": row["client_id"], "created_at": iso(row["created_at"]),
        **_lifecycle_out(row),
    }


def _lifecycle_out(row: dict[str, Any]) -> dict[str, Any]:
    """A row's lifecycle columns in stored form (rows read without them: the defaults).
    reply_to stays the original's seq: the readers render the quote from its current state."""
    if "version" not in row:
        return {"edited_at": None, "deleted": False, "version": 0, "reply_to": None, "mentions": [], "reactions": []}
    reactions = row.get("reactions")
    if isinstance(reactions, (str, bytes)):  # jsonb arrives as text without a codec
        reactions = orjson.loads(reactions)
    reply_to = row.get("reply_to")
    return {"edited_at": iso(row["edited_at"]) if row.get("edited_at") is not None else None,
            "deleted": bool(row.get("deleted")), "version": int(row["version"] or 0),
            "reply_to": int(reply_to) if reply_to is not None else None,
            "mentions": list(row.get("mentions") or []),
            "reactions": reactions if isinstance(reactions, list) else []}


class MessagePage(BaseModel):
    items: list[MessageOut]
    has_more: bool


class SendMessage(BaseModel):
    """Body of POST /rooms/{id}/messages as parsed; body length and client_id are checked by the
    accept path (app.messages.validate_send, shared with the WebSocket `send` frame)."""

    model_config = ConfigDict(extra="ignore")

    body: str
    client_id: str | None = None
    reply_to: Any = None  # a seq of the same room: checked by the accept path (422 reply_to)


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
    reply_to: Optional[int] = Field(None, ge=1, le=BIGINT_MAX,
                                    description="seq of the message in the same room this one answers; "
                                                "422 (details.fields.reply_to) when it does not exist or is deleted")


# -- lifecycle (issue 12): edits, read markers, search -------------------------------------

class EditMessage(BaseModel):
    """Body of PATCH /rooms/{id}/messages/{seq} as parsed; the body is checked like a send's by
    app.lifecycle.edit_message (shared with the WebSocket `edit` frame)."""

    model_config = ConfigDict(extra="ignore")

    body: Any = None  # the service names the field when it is missing or not a string


class EditMessageDoc(JsonBody):
    """Body of PATCH /rooms/{id}/messages/{seq} as documented: a text body, as for a send."""

    model_config = ConfigDict(title="EditMessage", json_schema_extra=body_schema)

    body: str = Field(max_length=DEFAULT_MAX_CHARS,
                      description=f"the new text: 1-MESSAGE_MAX_CHARS (default {DEFAULT_MAX_CHARS}) characters, "
                                  "not only whitespace; @mentions are parsed again",
                      json_schema_extra=text_field(NOT_BLANK_PATTERN))


class ReadMarker(BaseModel):
    """Body of POST /rooms/{id}/read as parsed (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")

    seq: StrictInt = Field(ge=0, le=BIGINT_MAX)


class ReadMarkerBody(JsonBody):
    """Body of POST /rooms/{id}/read: the seq read up to (markers only move forward; a seq past
    the room's last one is read as the last one)."""

    model_config = ConfigDict(title="ReadMarker", json_schema_extra=body_schema)

    seq: int = Field(ge=0, le=BIGINT_MAX, description="the newest seq the user has seen")


class ReadState(BaseModel):
    """A user's read marker in a room and what is left after it (POST /rooms/{id}/read, and the
    WebSocket `read` event without its `type`)."""

    room_id: str
    last_read_seq: int = Field(description="every message up to this seq counts as read")
    unread_count: int = Field(description="last_seq - last_read_seq (never below 0)")
    mention_count: int = Field(description="undeleted messages after the marker that @mention the user")


class SearchHit(BaseModel):
    """One search result: the message as the viewer sees it, with where the words matched."""

    message: MessageOut
    room_id: str
    snippet: str = Field(description="an excerpt of the body around the matches")
    highlights: list[list[int]] = Field(description="[start, end) character offsets into snippet")
    rank: float = Field(description="relevance: higher is better")


class SearchPage(BaseModel):
    items: list[SearchHit]
    next_cursor: Optional[str]


# == rooms and memberships ================================================================

RoleName = Literal["owner", "admin", "member"]


class RoomOut(BaseModel):
    """A room; my_role is the caller's (null in room_updated broadcasts: it differs per viewer)."""

    id: str
    name: str
    topic: str
    is_private: bool
    owner_id: str
    created_at: str
    member_count: int
    my_role: RoleName | None


def room_out(room: Room, member_count: int, my_role: str | None) -> dict[str, Any]:
    """The API's room object (app.rooms.render_rooms counts members and finds the viewer's role)."""
    return {
        "id": str(room.id), "name": room.name, "topic": room.topic, "is_private": room.is_private,
        "owner_id": str(room.owner_id), "created_at": iso(room.created_at),
        "member_count": member_count, "my_role": my_role,
    }


class MembershipOut(BaseModel):
    room_id: str
    user_id: str
    username: str
    role: RoleName
    joined_at: str


def membership_out(m: Membership) -> dict[str, Any]:
    """The API's membership object; `m.user` must be loaded (select_related("user"))."""
    return {
        "room_id": str(m.room_id), "user_id": str(m.user_id), "username": m.user.username,
        "role": Role(m.role).value, "joined_at": iso(m.joined_at),
    }


class RoomPage(BaseModel):
    items: list[RoomOut]
    next_cursor: str | None


class MembershipPage(BaseModel):
    items: list[MembershipOut]
    next_cursor: str | None


_TOPIC_OK = "\t\n\r"  # a topic may have lines; names may not, and PostgreSQL refuses NUL anywhere


def _no_controls(allowed: str = "") -> AfterValidator:
    def check(value: str) -> str:
        if any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in value):
            raise ValueError("must not contain control characters")
        return value
    return AfterValidator(check)


RoomName = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
                     _no_controls()]
RoomTopic = Annotated[StrictStr, StringConstraints(strip_whitespace=True, max_length=256), _no_controls(_TOPIC_OK)]


class CreateRoom(BaseModel):
    """Body of POST /rooms and of the WebSocket `create_room` frame (other frame keys are ignored)."""

    model_config = ConfigDict(extra="ignore")

    name: RoomName
    topic: RoomTopic = ""
    is_private: StrictBool = False
    member_ids: list[StrictStr] = Field(default_factory=list, max_length=MAX_INITIAL_MEMBERS)

    @field_validator("topic", mode="before")
    @classmethod
    def _null_topic(cls, v: Any) -> Any:
        return "" if v is None else v  # a null topic means "no topic"


class UpdateRoom(BaseModel):
    """Body of PATCH /rooms/{id}: only the fields present change."""

    model_config = ConfigDict(extra="ignore")

    name: RoomName | None = None
    topic: RoomTopic | None = None
    is_private: StrictBool | None = None

    @field_validator("name", "is_private", mode="before")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("must not be null")
        return v

    @field_validator("topic", mode="before")
    @classmethod
    def _null_topic(cls, v: Any) -> Any:
        return "" if v is None else v


class AddMember(BaseModel):
    """Body of POST /rooms/{id}/members."""

    model_config = ConfigDict(extra="ignore")

    user_id: StrictStr


class ChangeRole(BaseModel):
    """Body of PATCH /rooms/{id}/members/{user_id}: ownership moves only when the owner leaves."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["admin", "member"]


# The documented bodies of the room routes. The parsed models above strip before they count
# and refuse controls in a validator, which a JSON Schema cannot say as pydantic writes it;
# these say it as a pattern (schemathesis generates from them).

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
