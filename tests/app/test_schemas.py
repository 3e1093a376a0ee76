"""The wire and the OpenAPI document cannot drift: every renderer's output, from real rows,
validates against its response model in app/schemas.py with extra='forbid', every field
required and strict types, and carries the model's keys in the model's order.

The renderers skip pydantic at runtime (history and events are hot); this is where they
are held to the models /docs/openapi.json is built from.
"""

from __future__ import annotations

import types
import uuid
from datetime import timedelta
from functools import cache
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from redis.asyncio import Redis
from tortoise import connections

from app import auth, file_links, membership, messages, rooms, schemas
from app.resources import Resources
from app.serialize import utcnow
from app.settings import Settings
from app.store.keys import Keys
from models.file import File
from models.room import Membership
from models.user import User


# -- the strict twin of a response model --------------------------------------------------

def _strict_type(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return strict(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        return list[_strict_type(args[0])]  # type: ignore[misc]
    if origin in (Union, types.UnionType):
        return Union[tuple(_strict_type(a) for a in args)]  # noqa: UP007
    return tp


@cache
def strict(model: type[BaseModel]) -> type[BaseModel]:
    """`model` with no defaults (a key may be null only when its type says so, never absent),
    no extra keys and no coercion (a seq sent as "5" is not an int)."""
    fields: dict[str, Any] = {name: (_strict_type(f.annotation), ...) for name, f in model.model_fields.items()}
    return create_model(f"Strict{model.__name__}", __config__=ConfigDict(extra="forbid", strict=True),
                        **fields)  # type: ignore[call-overload, no-any-return]


def _models_in(tp: Any) -> tuple[bool, type[BaseModel] | None]:
    """(is a list, the response model inside) of a field's type: list[M], M, M | None."""
    if get_origin(tp) is list:
        return True, _models_in(get_args(tp)[0])[1]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return False, tp
    for arg in get_args(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return False, arg
    return False, None


def _same_order(model: type[BaseModel], data: Any) -> None:
    assert list(data) == list(model.model_fields), f"{model.__name__}: keys or their order differ"
    for name, f in model.model_fields.items():
        many, inner = _models_in(f.annotation)
        if inner is not None and data[name] is not None:
            for item in data[name] if many else [data[name]]:
                _same_order(inner, item)


def conforms(model: type[BaseModel], data: Any) -> None:
    strict(model).model_validate(data)
    _same_order(model, data)


def test_the_checker_catches_drift() -> None:
    good = {"id": "u", "username": "ann", "display_name": "Ann", "created_at": "2026-01-01T00:00:00.000Z"}
    conforms(schemas.UserOut, good)
    for bad in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "created_at"},
                {**good, "id": 5}):
        with pytest.raises(ValidationError):
            conforms(schemas.UserOut, bad)
    with pytest.raises(AssertionError):
        conforms(schemas.UserOut, dict(reversed(list(good.items()))))
    with pytest.raises(ValidationError):  # a nested model is held to the same rule
        conforms(schemas.MessagePage, {"items": [{"id": "m"}], "has_more": False})


# -- real rows ----------------------------------------------------------------------------

async def _user() -> User:
    name = f"s{uuid.uuid4().hex[:10]}"
    return await User.create(username=name, username_lower=name, display_name=name, password_hash="x")


async def _file(room_id: str, uploader: str, *, image: bool) -> File:
    fid = str(uuid.uuid4())
    return await File.create(
        id=fid, room_id=room_id, uploader_id=uploader, name="a.png" if image else "notes.txt",
        mime="image/png" if image else "text/plain", size=10, status="ready",
        storage_path=f"2026/01/01/{fid}.png", thumbnail_path=f"2026/01/01/{fid}.thumb.webp" if image else None,
        client_id="up-1" if image else None, message_seq=None, expires_at=utcnow() + timedelta(days=1))


async def test_users_rooms_and_memberships_render_their_models(redis: Redis, keys: Keys, db: None) -> None:
    owner, friend = await _user(), await _user()
    conforms(schemas.UserOut, schemas.user_out(owner))
    room = await rooms.create_room(redis=redis, keys=keys, owner_id=str(owner.id),
                                   data=schemas.CreateRoom(name="schemas", topic="t"))
    conforms(schemas.RoomOut, room)
    conforms(schemas.RoomOut, await rooms.get_room(room_id=room["id"], user_id=str(friend.id)))  # my_role null
    joined = await rooms.join_room(redis=redis, keys=keys, room_id=room["id"], user_id=str(friend.id))
    conforms(schemas.MembershipOut, joined)
    conforms(schemas.RoomPage, await rooms.list_rooms(user_id=str(owner.id), limit=1))
    members = await membership.list_members(room_id=room["id"], user_id=str(owner.id), limit=1)
    assert members["next_cursor"] is not None and len(members["items"]) == 1
    conforms(schemas.MembershipPage, members)
    row = await Membership.filter(room_id=room["id"], user_id=friend.id).select_related("user").first()
    conforms(schemas.MembershipOut, schemas.membership_out(row))  # type: ignore[arg-type]


async def test_files_and_media_links_render_their_models(redis: Redis, keys: Keys, settings: Settings,
                                                         db: None) -> None:
    owner, other = await _user(), await _user()
    room = await rooms.create_room(redis=redis, keys=keys, owner_id=str(owner.id),
                                   data=schemas.CreateRoom(name="files"))
    for image in (True, False):
        f = await _file(room["id"], str(owner.id), image=image)
        out = schemas.file_out(f)
        conforms(schemas.FileOut, out)
        assert (out["thumbnail_url"] is not None) is image
        conforms(schemas.FileMetaOut, schemas.file_meta_out(f, viewer_id=str(owner.id)))
        conforms(schemas.FileMetaOut, schemas.file_meta_out(f, viewer_id=str(other.id)))
        conforms(schemas.MediaLinksOut, file_links.links(settings, out, str(owner.id)))


def test_token_pair_renders_its_model() -> None:
    conforms(schemas.TokenPairOut, auth.TokenPair("a", "r", 900).body())


async def test_messages_render_their_model_from_the_accept_path_the_cache_and_postgres(
        redis: Redis, keys: Keys, resources: Resources, db: None) -> None:
    owner = await _user()
    room = await rooms.create_room(redis=redis, keys=keys, owner_id=str(owner.id),
                                   data=schemas.CreateRoom(name="messages"))
    rid, uid = room["id"], str(owner.id)
    f = await _file(rid, uid, image=True)
    # The accept path writes the message as JSON text itself (no dict renderer): hold it too.
    text, _ = await messages.accept_message(resources, room_id=rid, sender_id=uid, body="hi", client_id="c1")
    conforms(schemas.MessageOut, text)
    with_file, _ = await messages.accept_message(resources, room_id=rid, sender_id=uid, body="", kind="file",
                                                 file=schemas.file_out(f), rate_limit=False)
    conforms(schemas.MessageOut, with_file)
    system, _ = await messages.accept_message(resources, room_id=rid, sender_id=None, body="welcome",
                                              kind="system")
    conforms(schemas.MessageOut, system)
    items, has_more = await messages.history(redis=redis, keys=keys, settings=resources.settings, room_id=rid,
                                             before=None, after=None, limit=10)
    assert len(items) == 3
    conforms(schemas.MessagePage, {"items": items, "has_more": has_more})
    # A PostgreSQL row, as history reads one below the stream (the flush's INSERT, by hand).
    mid = str(uuid.uuid4())
    await connections.get("default").execute_query(
        "INSERT INTO messages (id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at)"
        " VALUES ($1, $2, 1000, $3, 'image', '', $4, NULL, $5)", [mid, rid, uid, str(f.id), utcnow()])
    rows = await connections.get("default").execute_query_dict(
        "SELECT id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at FROM messages WHERE id = $1",
        [mid])
    conforms(schemas.MessageOut, schemas.message_out(rows[0], f))
    conforms(schemas.MessageOut, schemas.message_out({**rows[0], "sender_id": None, "file_id": None}, None))



# -- where the schemas sit in the import graph ----------------------------------------------

def _imports(path: str) -> set[str]:
    """Every module a file imports, at any depth of its body (function-level imports too)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(path).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_schemas_import_no_service() -> None:
    """Services and blueprints both import app.schemas; it imports only models and small helpers."""
    from tests.support import ROOT

    ours = {m for m in _imports(str(ROOT / "app" / "schemas.py")) if m.startswith(("app", "blueprints", "tasks"))}
    assert ours <= {"app.serialize", "app.serialize.iso", "app.settings", "app.settings.Settings",
                    "app.validation", "app.validation.STORABLE_PATTERN"}, ours


def test_files_and_messages_do_not_import_each_other_both_ways() -> None:
    """app.files posts its message through app.messages; app.messages renders files through app.schemas."""
    from tests.support import ROOT

    imported = _imports(str(ROOT / "app" / "messages.py"))
    assert not {m for m in imported if m == "app.files" or m.startswith("app.files.")}
    assert "app.messages" in _imports(str(ROOT / "app" / "files.py"))
