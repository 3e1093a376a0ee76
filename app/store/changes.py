"""Changes to existing messages in Redis: the change script's call, its result codes, and the
re-seeding of a lost change counter.

The script is app/store/lua/change.lua: ONE atomic call per edit, delete or reaction does the
member check, the permission and no-op checks, the rate limit, the room's next `version`
(gap-free per room, docs/api.md "versions"), the new state into the `state` overlay, the
flush's to-do (`changed`), the mention bookkeeping and the `message_updated` publish. Only
when Redis cannot decide does the caller (app/lifecycle.py) ask PostgreSQL and call again:
a lost member set, counter or message entry, or a moderator's role.

The change ops are idempotent in effect (a repeated reaction, delete or identical edit is a
no-op), so a call retried after a lost reply cannot apply a change twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.store import scripts
from app.store.keys import Keys

# Result codes of app/store/lua/change.lua (2-5 as the accept script's).
(OK, UNCHANGED, MEMBERS_MISSING, NOT_MEMBER, RATE_LIMITED, SEQ_MISSING, NEED_BASE, NOT_FOUND, FORBIDDEN,
 NOT_SENDER, GONE, TOO_MANY, VERSION_MISSING) = range(13)

OPS = ("edit", "delete", "react_add", "react_remove")


def change_kind(op: str) -> str:
    """The `change` field of the message_updated event for a script op."""
    return "reaction" if op.startswith("react_") else op


@dataclass(frozen=True)
class ChangePolicy:
    """The change script's limits (from settings, per call: they are few and cheap)."""

    rate_limit: int  # changes per window and user (0 = off)
    rate_window_ms: int
    reactions_max: int  # distinct emoji per message
    mention_ttl_s: int  # a mention key's life (RETENTION_DAYS: the message's own)


@dataclass(frozen=True)
class ChangeResult:
    code: int
    message: str = ""  # the message's JSON after the change (OK) or as it is (UNCHANGED)
    version: int = 0  # OK: the version this change took
    retry_ms: int = 0  # RATE_LIMITED
    reason: str = ""  # FORBIDDEN: 'not_sender' | 'not_editable'


async def change(redis: Redis, keys: Keys, policy: ChangePolicy, *, op: str, room_id: str, seq: int,
                 actor: str, event: tuple[str, str], moderator: bool = False, body: str = "",
                 mentions_json: str = "[]", mentions: list[str] | None = None, emoji: str = "", now: str = "",
                 base: str = "") -> ChangeResult:
    """Run the change script once. `event` is events.change_payload_parts(room_id, kind);
    `mentions` (with `mentions_json`, the same list as JSON) are an edit's new mentions;
    `base` is '' or the message as PostgreSQL holds it (after a NEED_BASE)."""
    if op not in OPS:
        raise ValueError(f"unknown change op {op!r}")
    script_keys = [
        keys.room_members(room_id), keys.room_seq(room_id), keys.room_log(room_id), keys.room_state(room_id),
        keys.room_changed(room_id), keys.room_version(room_id), keys.pending_set(room_id), keys.script_rate("chg", room_id, actor),
        keys.room_flushed(room_id), *(keys.room_mentions(room_id, n) for n in (mentions or ())),
    ]
    args = [op, actor, int(seq), "1" if moderator else "0", body, mentions_json, emoji, now,
            policy.reactions_max, base, event[0], event[1], room_id, keys.room_channel(room_id),
            policy.rate_limit, policy.rate_window_ms, keys.room_mentions_prefix(room_id), policy.mention_ttl_s]
    res = await scripts.CHANGE(redis, script_keys, args)
    code = int(res[0])
    if code == OK:
        return ChangeResult(OK, _text(res[1]), int(res[2]))
    if code == UNCHANGED:
        return ChangeResult(UNCHANGED, _text(res[1]))
    if code == RATE_LIMITED:
        return ChangeResult(RATE_LIMITED, retry_ms=int(res[1]))
    if code == FORBIDDEN:
        return ChangeResult(FORBIDDEN, reason=_text(res[1]))
    return ChangeResult(code)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def seed_version(redis: Redis, keys: Keys, room_id: str, pg_max: int) -> int:
    """Re-create a lost change counter from PostgreSQL's highest version (no-op when it exists);
    returns its value."""
    return int(await scripts.SEED_VERSION(redis, [keys.room_version(room_id), keys.room_changed(room_id)],
                                          [int(pg_max)]))
