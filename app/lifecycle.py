"""Edits, deletes and reactions: changes to messages already sent (issue 12, docs/api.md).

Each change is ONE Redis script call (app/store/changes.py, lua/change.lua) that checks
membership, permission and no-ops, applies the rate limit, takes the room's next `version`
(gap-free, so clients catch up with one cursor per room), writes the message's new state
into the room's overlay and publishes `message_updated` to the room. PostgreSQL is not on
this path; it is asked only when Redis cannot decide:

- the member set or a counter (seq, version) was lost: rebuilt or re-seeded, as for a send;
- the message is no longer in the stream nor in the overlay (flushed and trimmed): its row
  is read (messages.latest_message) and handed to the script as the base to change;
- a delete of someone else's message: only the sender passes in Redis; an owner or admin is
  recognised in PostgreSQL (rooms.role_in) and the script is called again as moderator.

The worker writes the overlay to PostgreSQL later (app/flush). Changes are idempotent in
effect (a repeated reaction, delete or identical edit answers the current state with no
new version and no event), so a client may simply retry one.

Direct mode (CHAT_WRITE_MODE=direct, the benchmark's database-only baseline) has no Redis
overlay: changes answer 409 `conflict` there.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import orjson
from tortoise import connections

from app import access, mentions, messages, rooms
from app.errors import (Conflict, Forbidden, MessageDeleted, MessageNotFound, RateLimited, ReactionLimit,
                        RoomNotFound, ValidationFailed)
from app.ids import is_bigint, parse_uuid
from app.realtime import events
from app.resources import Resources
from app.schemas import message_view
from app.serialize import dumps, now_iso
from app.store import cache, changes
from app.validation import check_text
from models.room import Role

EMOJI_MAX_CHARS = 32  # the spec's bound (code points): a ZWJ sequence with skin tones fits
# A lost member set, seq counter and version counter, a flushed message and a moderator's
# role may each cost one more call.
_ATTEMPTS = 8
_MODERATORS = (Role.OWNER, Role.ADMIN)
# Whitespace and control characters: invisible or layout-breaking in a reaction chip.
_REFUSED_CATEGORIES = ("Cc", "Cs", "Zs", "Zl", "Zp")


def validate_emoji(emoji: Any) -> str:
    """A reaction's emoji: 1-32 characters, no whitespace or control characters (422 `emoji`).

    Any other text is allowed (custom shortcodes, ZWJ sequences): the server does not keep
    an emoji list that would age with every Unicode release."""
    if not isinstance(emoji, str) or not 1 <= len(emoji) <= EMOJI_MAX_CHARS:
        raise ValidationFailed({"emoji": f"must be 1-{EMOJI_MAX_CHARS} characters"})
    if any(ch.isspace() or unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in emoji):
        raise ValidationFailed({"emoji": "must not contain whitespace or control characters"})
    return emoji


async def edit_message(res: Resources, *, room_id: str, seq: int, user_id: str, body: Any) -> dict[str, Any]:
    """Replace the text of one's own text message; the new state as `user_id` sees it.

    The @mentions are parsed again (the old ones stop counting); an identical body changes
    nothing (no version, no event, `edited_at` kept)."""
    messages.validate_send(res.settings, kind="text", body=body, client_id=None)
    check_text({"body": body})
    names = mentions.parse(body, res.settings.mentions_max)
    return await _change(res, "edit", room_id=room_id, seq=seq, user_id=user_id, body=body, names=names)


async def delete_message(res: Resources, *, room_id: str, seq: int, user_id: str) -> dict[str, Any]:
    """Delete a message (its sender, or the room's owner or an admin): the tombstone.

    Deleting a deleted message answers the tombstone again. A file message's bytes are
    removed by the flush once the tombstone is in PostgreSQL."""
    return await _change(res, "delete", room_id=room_id, seq=seq, user_id=user_id)


async def react(res: Resources, *, room_id: str, seq: int, user_id: str, emoji: Any, add: bool) -> dict[str, Any]:
    """Add (or remove) the user's reaction; idempotent: the message as it is after."""
    validate_emoji(emoji)
    return await _change(res, "react_add" if add else "react_remove", room_id=room_id, seq=seq, user_id=user_id,
                         emoji=emoji)


async def _change(res: Resources, op: str, *, room_id: str, seq: Any, user_id: str, body: str = "",
                  names: list[str] | None = None, emoji: str = "") -> dict[str, Any]:
    redis, keys, settings = res.redis, res.keys, res.settings
    room_id = parse_uuid(room_id, RoomNotFound)
    if not is_bigint(seq, 1):
        raise MessageNotFound()
    if settings.write_mode == "direct":
        raise Conflict("Edits, deletes and reactions are not supported in direct mode (CHAT_WRITE_MODE=direct).",
                       details={"write_mode": "direct"})
    policy = changes.ChangePolicy(rate_limit=settings.rate_changes,
                                  rate_window_ms=settings.rate_changes_window_s * 1000,
                                  reactions_max=settings.reactions_max_emoji,
                                  mention_ttl_s=settings.retention_days * 86400)
    event = events.change_payload_parts(room_id, changes.change_kind(op))
    now = now_iso() if op == "edit" else ""
    base, moderator = "", False
    for _ in range(_ATTEMPTS):
        got = await changes.change(redis, keys, policy, op=op, room_id=room_id, seq=seq, actor=user_id,
                                   event=event, moderator=moderator, body=body, mentions_json=dumps(names or []),
                                   mentions=names, emoji=emoji, now=now, base=base)
        code = got.code
        if code in (changes.OK, changes.UNCHANGED):
            return message_view(orjson.loads(got.message), user_id)
        if code == changes.MEMBERS_MISSING:
            await access.rebuild_members(redis, keys, room_id)
        elif code == changes.NOT_MEMBER:
            await access.check_member(redis, keys, room_id, user_id)  # raises, or heals a stale set
        elif code == changes.SEQ_MISSING:
            await cache.seed_seq(redis, keys, room_id, await messages._pg_max_seq(room_id))
        elif code == changes.VERSION_MISSING:
            await changes.seed_version(redis, keys, room_id, await _pg_max_version(room_id))
        elif code == changes.NEED_BASE:
            base = await _pg_base(res, room_id, seq)
        elif code == changes.NOT_SENDER:
            if moderator or await rooms.role_in(room_id, user_id) not in _MODERATORS:
                raise Forbidden("Only the sender, the room's owner or an admin may delete this message.",
                                details={"reason": "not_sender"})
            moderator = True
        elif code == changes.FORBIDDEN:
            if got.reason == "not_editable":
                raise Forbidden("Only text messages can be edited.", details={"reason": "not_editable"})
            raise Forbidden("Only the sender may edit this message.", details={"reason": "not_sender"})
        elif code == changes.NOT_FOUND:
            raise MessageNotFound()
        elif code == changes.GONE:
            raise MessageDeleted()
        elif code == changes.TOO_MANY:
            raise ReactionLimit(details={"max": settings.reactions_max_emoji})
        elif code == changes.RATE_LIMITED:
            raise RateLimited(-(-got.retry_ms // 1000))
        else:  # pragma: no cover - a script and its wrapper out of step
            raise RuntimeError(f"change script answered {code}")
    raise RoomNotFound()  # the room vanished while its cache was being rebuilt


async def _pg_base(res: Resources, room_id: str, seq: int) -> str:
    """The message as PostgreSQL holds it, in stored form (no per-viewer `me`), for the script."""
    msg = await messages.latest_message(res, room_id, seq)
    if msg is None:  # never stored (set aside as a dead letter) or past retention
        raise MessageNotFound()
    return dumps(msg)


async def _pg_max_version(room_id: str) -> int:
    """The highest version PostgreSQL knows for the room: rooms.last_version (kept by the flush)
    or a row's version (the partial index (room_id, version) WHERE version > 0 answers it)."""
    rows = await connections.get("default").execute_query_dict(
        "SELECT GREATEST((SELECT COALESCE(MAX(version), 0) FROM messages WHERE room_id = $1 AND version > 0),"
        " COALESCE((SELECT last_version FROM rooms WHERE id = $1), 0)) AS v", [room_id])
    return int(rows[0]["v"])
