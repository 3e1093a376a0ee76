"""Messages: the accept path (cache or direct mode), history merged from cache and database.

Cache mode (the default): a send is one Redis script call (app/store/cache.py) that
checks membership, idempotency and the rate limit, allocates the seq, appends
to the room's stream and publishes the event. PostgreSQL is touched only to
rebuild what Redis lost (a member set, a seq counter) and to answer a retried
client_id whose message was already flushed and trimmed. The worker moves the
stream into PostgreSQL later (app/flush/__init__.py).

Direct mode (CHAT_WRITE_MODE=direct) is the "database only" design the cache
exists to beat: the seq comes from `rooms.last_seq` and the row is INSERTed
before the send is acknowledged. It exists so the benchmark can compare.

History reads Redis FIRST, in one atomic step (the stream's first id and the
wanted entries), then PostgreSQL strictly below that first id. The worker trims
the stream only after its commit, so whatever is below the first id is already
in PostgreSQL: no gap and no duplicate, even while a flush runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from redis.asyncio import Redis
from tortoise import connections
from tortoise.transactions import in_transaction

from app.store import cache, changes, ratelimit, scripts
from app import access, mentions, rooms
from app.errors import NotMember, RateLimited, RoomNotFound, ValidationFailed
from app.realtime import events
from app.resources import Resources
from app.ids import is_bigint, parse_uuid, uuid7
from app.store.keys import Keys
from app.serialize import dumps, iso, now_iso, utcnow
from app.schemas import CLIENT_ID_MAX, message_out, message_view
from app.settings import Settings
from app.metrics import counted_accept
from models.file import File

log = logging.getLogger("chat.messages")

KINDS = ("text", "image", "file", "system")
_ATTEMPTS = 3  # a lost member set and a lost counter may each need one rebuild


# -- validation ------------------------------------------------------------------

def validate_send(settings: Settings, *, kind: str, body: Any, client_id: Any, reply_to: Any = None) -> None:
    """422 with per-field reasons; a rejected send never reaches Redis, so it consumes no seq."""
    fields: dict[str, str] = {}
    if reply_to is not None and not is_bigint(reply_to, 1):
        fields["reply_to"] = "must be the seq of a message in this room"
    if kind not in KINDS:
        fields["kind"] = f"must be one of {', '.join(KINDS)}"
    if not isinstance(body, str):
        fields["body"] = "must be a string"
    elif len(body) > settings.message_max_chars:
        fields["body"] = f"must be at most {settings.message_max_chars} characters"
    elif kind in ("text", "system") and not body.strip():
        fields["body"] = "must not be empty"
    if client_id is not None:
        if not isinstance(client_id, str):
            fields["client_id"] = "must be a string"
        elif not 1 <= len(client_id) <= CLIENT_ID_MAX:
            fields["client_id"] = f"must be 1-{CLIENT_ID_MAX} characters"
    if fields:
        raise ValidationFailed(fields)


# -- accept ------------------------------------------------------------------------


def quote_of(settings: Settings, msg: dict[str, Any]) -> dict[str, Any]:
    """A reply's quote of `msg` (its current state): the first REPLY_EXCERPT_CHARS of the body,
    the file's name for a file without text, "" once deleted."""
    if msg.get("deleted"):
        return {"seq": msg["seq"], "sender_id": msg.get("sender_id"), "excerpt": "", "deleted": True}
    body = msg.get("body") or ""
    excerpt = body[:settings.reply_excerpt_chars] if body else str((msg.get("file") or {}).get("name") or "")
    return {"seq": msg["seq"], "sender_id": msg.get("sender_id"), "excerpt": excerpt, "deleted": False}


async def latest_message(res: Resources, room_id: str, seq: int) -> dict[str, Any] | None:
    """One message's latest state in stored form (no per-viewer `me`), for the write path: a
    change built on a flushed message, a reply's quote. get_message already takes the highest
    version among the overlay, the stream and the row, and renders the row's reply quote."""
    return await get_message(redis=res.redis, keys=res.keys, settings=res.settings, room_id=room_id, seq=seq)


async def _reply_quote(res: Resources, room_id: str, sender_id: str | None, reply_to: int) -> dict[str, Any]:
    """The quote of the original a reply answers, as it is at send time (the live event carries
    this snapshot; reads render it again from the original's current state).

    No such message (or a deleted one) is a 422; but a sender who may not post here learns
    nothing from that: the member check (Redis set first) answers 404/403 before it."""
    orig = await latest_message(res, room_id, reply_to)
    if orig is None or orig.get("deleted"):
        if sender_id:
            await access.authorize(res.redis, res.keys, room_id, sender_id)
        raise ValidationFailed({"reply_to": "no such message in this room"})
    return quote_of(res.settings, orig)


@counted_accept  # chat_messages_accepted/rejected_total: every send passes here
async def accept_message(res: Resources, *, room_id: str, sender_id: str | None, body: str, kind: str = "text",
                         file: dict[str, Any] | None = None, client_id: str | None = None, conn_id: str = "",
                         rate_limit: bool = True, reply_to: int | None = None) -> tuple[dict[str, Any], bool]:
    """Accept a message into the room; (message, created). created=False: a retried client_id.

    `res` is the process's Resources (settings, Redis, the accept policy and pipeline);
    the rest is this message. `conn_id`: the sending connection, which gets an ack instead.
    `reply_to`: the seq of the message this one answers (its quote goes into the message)."""
    redis, keys, settings = res.redis, res.keys, res.settings
    validate_send(settings, kind=kind, body=body, client_id=client_id, reply_to=reply_to)
    room_id = parse_uuid(room_id, RoomNotFound)
    names = mentions.parse(body, settings.mentions_max)
    quote = await _reply_quote(res, room_id, sender_id, reply_to) if reply_to is not None else None
    if settings.write_mode == "direct":
        return await _accept_direct(res, room_id=room_id, sender_id=sender_id, body=body, kind=kind, file=file,
                                    client_id=client_id, conn_id=conn_id, rate_limit=rate_limit, quote=quote,
                                    names=names)
    mid = uuid7()  # time-ordered: flushed batches append to the primary-key index
    before_seq = dumps({"id": mid, "room_id": room_id})[:-1] + ',"seq":'
    # The lifecycle fields start at their defaults (docs/api.md); empty arrays are fine here:
    # Python's encoder writes them (only Lua's cjson cannot, see change.lua).
    after_seq = "," + dumps({"sender_id": sender_id, "kind": kind, "body": body, "file": file,
                             "client_id": client_id, "created_at": now_iso(), "edited_at": None,
                             "deleted": False, "version": 0, "reply_to": quote, "mentions": names,
                             "reactions": []})[1:]
    event = events.message_payload_parts(room_id, conn_id)
    for _ in range(_ATTEMPTS):
        got = await cache.accept(res.batcher, keys, res.policy, room_id=room_id, sender_id=sender_id,
                                 client_id=client_id, before_seq=before_seq, after_seq=after_seq, event=event,
                                 rate_limited=rate_limit, mentions=names)
        if got.code == cache.OK:
            if got.flush_queued:
                _trigger_flush(res, room_id)
            return orjson.loads(got.message), True
        if got.code == cache.DUPLICATE:
            if got.message:
                return orjson.loads(got.message), False
            # Trimmed from the stream: every trimmed entry is in PostgreSQL (or set aside in
            # dead_letters, then it was never stored and the send is accepted anew).
            prev = await get_message(redis=redis, keys=keys, settings=settings, room_id=room_id, seq=got.seq)
            if prev is not None:
                return prev, False
            await cache.forget_client_id(redis, keys, room_id, sender_id, client_id, got.seq)
            continue
        if got.code == cache.RATE_LIMITED:
            raise RateLimited(-(-got.retry_ms // 1000))
        if got.code == cache.MEMBERS_MISSING:
            # Redis lost the member set: reloaded from PostgreSQL (the only PG touch of a send)
            # under the room row's share lock, so a removal meanwhile is not undone.
            await access.rebuild_members(redis, keys, room_id)
        elif got.code == cache.NOT_MEMBER:
            # PostgreSQL decides between 404 and 403 (or heals a stale set); "not a member" is
            # cached for a few seconds, so repeating costs no query.
            await access.check_member(redis, keys, room_id, sender_id or "")
        elif got.code == cache.SEQ_MISSING:
            await cache.seed_seq(redis, keys, room_id, await _pg_max_seq(room_id))
    raise RoomNotFound()  # the room vanished while we were rebuilding its cache


async def _pg_max_seq(room_id: str) -> int:
    """The highest seq PostgreSQL knows for the room: its rows, or rooms.last_seq (kept by the
    flush), which stays above seqs the retention prune deleted."""
    rows = await connections.get("default").execute_query_dict(
        "SELECT GREATEST((SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_id = $1),"
        " COALESCE((SELECT last_seq FROM rooms WHERE id = $1), 0)) AS m", [room_id])
    return int(rows[0]["m"])


def _trigger_flush(res: Resources, room_id: str) -> None:
    """Backlog over the threshold: ask the worker to flush this room now (never awaited by the
    send; gathered with other rooms into one flush_rooms job, app/jobs.py; if the enqueue
    fails, the periodic flush picks the room up anyway)."""
    res.jobs.trigger_flush(room_id)


# -- direct mode -------------------------------------------------------------------

class _Duplicate(Exception):
    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message


class _NotMember(Exception):
    pass


async def _accept_direct(res: Resources, *, room_id: str, sender_id: str | None, body: str, kind: str,
                         file: dict[str, Any] | None, client_id: str | None, conn_id: str,
                         rate_limit: bool, quote: dict[str, Any] | None = None,
                         names: list[str] | None = None) -> tuple[dict[str, Any], bool]:
    """Database-only accept: seq from rooms.last_seq under the row lock, INSERT, then publish.

    The sender's read marker moves to the new seq in the same transaction (as the accept
    script does in Redis); mentions are stored in the row only (no Redis mention keys)."""
    redis, keys, settings = res.redis, res.keys, res.settings
    if rate_limit and sender_id:
        wait = await ratelimit.hit(redis, keys.rate("msg", sender_id), settings.rate_messages,
                                   settings.rate_messages_window_s)
        if wait:
            raise RateLimited(wait)
    try:
        async with in_transaction() as conn:
            rows = await conn.execute_query_dict(
                "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", [room_id])
            if not rows:
                raise RoomNotFound()
            seq = int(rows[0]["last_seq"])
            if sender_id:
                ok = await conn.execute_query_dict(
                    "SELECT 1 FROM memberships WHERE room_id = $1 AND user_id = $2 AND NOT banned",
                    [room_id, sender_id])
                if not ok:
                    raise _NotMember()
            if client_id:  # the room row lock serializes retries, so check-then-insert is safe
                prev = await conn.execute_query_dict(
                    f"SELECT {_COLUMNS} FROM messages WHERE room_id = $1 AND sender_id IS NOT DISTINCT FROM $2"
                    " AND client_id = $3 LIMIT 1", [room_id, sender_id, client_id])
                if prev:
                    raise _Duplicate((await _render_rows(prev))[0])
            now = utcnow()
            msg = {"id": uuid7(), "room_id": room_id, "seq": seq, "sender_id": sender_id, "kind": kind,
                   "body": body, "file": file, "client_id": client_id, "created_at": iso(now),
                   "edited_at": None, "deleted": False, "version": 0, "reply_to": quote, "mentions": names or [],
                   "reactions": []}
            await conn.execute_query(
                "INSERT INTO messages (id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at,"
                " reply_to, mentions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                [msg["id"], room_id, seq, sender_id, kind, body, file["id"] if file else None, client_id, now,
                 quote["seq"] if quote else None, names or None])
            if sender_id:
                await conn.execute_query(
                    "UPDATE memberships SET last_read_seq = GREATEST(last_read_seq, $3)"
                    " WHERE room_id = $1 AND user_id = $2", [room_id, sender_id, seq])
            # Published while the room row is still locked: the next send of this room waits for
            # our commit, so events leave in seq order (a publish after commit could overtake).
            await redis.publish(keys.room_channel(room_id), events.message_payload(room_id, dumps(msg), conn_id))
    except _Duplicate as dup:
        return dup.message, False
    except _NotMember:
        await rooms.require_member(room_id=room_id, user_id=sender_id or "")
        raise NotMember() from None
    return msg, True


# -- reads -------------------------------------------------------------------------

_COLUMNS = ("id, room_id, seq, sender_id, kind, body, file_id, client_id, created_at,"
            " edited_at, deleted, version, reply_to, mentions, reactions")


def retention_cutoff(settings: Settings, now: datetime | None = None) -> datetime:
    """Messages created before this instant are past RETENTION_DAYS: hidden here, pruned by app/retention.py."""
    return (now or utcnow()) - timedelta(days=settings.retention_days)


async def _render_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PostgreSQL rows -> messages in stored form (the JSON the cache holds, except reply_to:
    a row holds only the original's seq, which the readers turn into a quote)."""
    file_ids = {r["file_id"] for r in rows if r["file_id"] is not None}
    files = {f.id: f for f in await File.filter(id__in=list(file_ids))} if file_ids else {}
    return [message_out(r, files.get(r["file_id"]) if r["file_id"] is not None else None) for r in rows]


async def _pg_range(room_id: str, *, lo: int, hi: int, ascending: bool, count: int,
                    since: datetime | None = None) -> list[dict[str, Any]]:
    """Up to `count` messages with lo <= seq <= hi (created at or after `since`) from PostgreSQL."""
    if count <= 0 or hi < lo:
        return []
    order = "ASC" if ascending else "DESC"
    rows = await connections.get("default").execute_query_dict(
        f"SELECT {_COLUMNS} FROM messages WHERE room_id = $1 AND seq >= $2 AND seq <= $3"
        f" AND created_at >= $5 ORDER BY seq {order} LIMIT $4",
        [room_id, lo, hi, count, since or datetime(1970, 1, 1, tzinfo=timezone.utc)])
    return await _render_rows(rows)


def _cached(seq: int, raw: str) -> dict[str, Any] | None:
    """A stream entry as a message; None for one that is not (never written by the accept path:
    the flush sets it aside in dead_letters, and a read must not fail on it meanwhile)."""
    try:
        m = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.error("history: unreadable cache entry at seq %d skipped", seq)
        return None
    return m if isinstance(m, dict) else None


def _version(msg: dict[str, Any] | None) -> int:
    v = (msg or {}).get("version")
    return v if type(v) is int else -1


def _newest(*candidates: dict[str, Any] | None) -> dict[str, Any] | None:
    """The highest `version` among one message's copies (earlier ones win ties: pass the
    copy whose file is freshest first). Versions only grow, so the highest is the latest:
    a PostgreSQL row read after the overlay may already hold a newer change than it."""
    best: dict[str, Any] | None = None
    for c in candidates:
        if c is not None and (best is None or _version(c) > _version(best)):
            best = c
    return best


def _quoted_seq(msg: dict[str, Any]) -> int | None:
    """The seq a reply answers: a row holds the seq, a stored message its quote."""
    ref = msg.get("reply_to")
    seq = ref.get("seq") if isinstance(ref, dict) else ref
    return seq if type(seq) is int else None


async def _overlay_files(items: list[dict[str, Any]]) -> None:
    """Cached messages were rendered at send time: show their files' current expiry. A file whose
    row is gone (purged with its retention period, or its room's) is expired: its bytes are."""
    ids = {m["file"]["id"] for m in items if m.get("file")}
    if not ids:
        return
    current = {str(f.id): f for f in await File.filter(id__in=list(ids))}
    for m in items:
        if not m.get("file"):
            continue
        f = current.get(m["file"]["id"])
        if f is not None:
            m["file"] = {**m["file"], "expired": f.expired, "expires_at": iso(f.expires_at)}
        else:
            m["file"] = {**m["file"], "expired": True}


async def _latest_of(redis: Redis, keys: Keys, settings: Settings, room_id: str,
                     seqs: list[int]) -> dict[int, dict[str, Any]]:
    """The current state of a few messages by seq (reply originals outside a page): Redis (the
    overlay, the stream's entries and its first id in one MULTI) first, then PostgreSQL for
    what the stream no longer holds, the highest version per seq."""
    if not seqs:
        return {}
    log_key, state_key = keys.room_log(room_id), keys.room_state(room_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xrange(log_key, "-", "+", count=1)
        pipe.hmget(state_key, [str(s) for s in seqs])
        for s in seqs:
            pipe.xrange(log_key, f"{s}-0", f"{s}-0")
        head, states, *entries = await pipe.execute()
    first = int(head[0][0].split("-", 1)[0]) if head else None
    out: dict[int, dict[str, Any]] = {}
    for s, raw, entry in zip(seqs, states, entries):
        state = _cached(s, raw) if raw is not None else None
        cached = _cached(s, entry[0][1]["m"]) if entry else None
        best = _newest(state, cached)
        if best is not None:
            out[s] = best
    below = [s for s in seqs if first is None or s < first]
    if below:
        rows = await connections.get("default").execute_query_dict(
            f"SELECT {_COLUMNS} FROM messages WHERE room_id = $1 AND seq = ANY($2::bigint[])", [room_id, below])
        for m in await _render_rows(rows):
            best = _newest(m, out.get(m["seq"]))
            if best is not None:
                out[m["seq"]] = best
    since = str(iso(retention_cutoff(settings)))
    return {s: m for s, m in out.items() if str(m.get("created_at") or "") >= since}


async def _finish(redis: Redis, keys: Keys, settings: Settings, room_id: str, items: list[dict[str, Any]],
                  from_cache: list[dict[str, Any]], viewer_id: str | None) -> list[dict[str, Any]]:
    """What every read does last: current file expiry on the copies from Redis, reply quotes
    rendered from the originals' current state, the per-viewer view (message_view)."""
    await _overlay_files(from_cache)
    by_seq = {m["seq"]: m for m in items}
    wanted = sorted({q for m in items if (q := _quoted_seq(m)) is not None and q not in by_seq})
    originals = {**await _latest_of(redis, keys, settings, room_id, wanted), **by_seq}
    for m in items:
        seq = _quoted_seq(m)
        if seq is None:
            continue
        orig = originals.get(seq)
        if orig is not None:
            m["reply_to"] = quote_of(settings, orig)
        elif not isinstance(m.get("reply_to"), dict):
            # The original is past retention: a quote with nothing left to show.
            m["reply_to"] = {"seq": seq, "sender_id": None, "excerpt": "", "deleted": False}
    return [message_view(m, viewer_id) for m in items]


class MembershipUnknown(Exception):
    """history(member=...): the room's loaded member set does not hold the user (or Redis lost
    the set); nothing was read. The caller runs the full check (app/access.authorize: it heals a
    lost set, or raises the right 403/404) and reads again without `member`. Never reaches a client."""


async def history(*, redis: Redis, keys: Keys, settings: Settings, room_id: str, before: int | None,
                  after: int | None, limit: int, viewer_id: str | None = None,
                  member: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """(items ascending by seq, has_more). Newest `limit` by default; with `after` the oldest after it;
    with both, strictly between. has_more: more exist in the paging direction.

    Each message in its latest state: the highest version among its stream entry, the change
    overlay (read with the entries, atomically) and its PostgreSQL row; quotes and `me` per
    `viewer_id` (message_view). `member`: read only for this user as a member the Redis set
    knows, checked in the same script as the read, else MembershipUnknown (a WebSocket sync's
    check and read in one round trip)."""
    room_id = parse_uuid(room_id, RoomNotFound)
    ascending = after is not None
    lo = (after or 0) + 1
    hi = before - 1 if before is not None else None
    if hi is not None and hi < lo:
        if member is not None:
            raise MembershipUnknown()  # nothing to read, but the answer still needs the check
        return [], False
    want = limit + 1  # one extra tells has_more
    got = await cache.read(redis, keys, room_id, ascending=ascending, lo=lo, hi=hi, count=want, member=member)
    if got is None:
        raise MembershipUnknown()
    overlay = {s: m for s, raw in got.overlay.items() if (m := _cached(s, raw)) is not None}
    # Past the retention window a message is gone wherever it still is: the Redis tail of an
    # idle room, or a PostgreSQL row the daily prune has not reached yet.
    cutoff = retention_cutoff(settings)
    since = iso(cutoff)
    entries = [(seq, m) for seq, m in ((seq, _cached(seq, raw)) for seq, raw in got.entries)
               if m is not None and str(m.get("created_at") or "") >= since]
    # Everything below the stream's first entry is committed in PostgreSQL (the worker trims
    # only after its commit); with an empty stream, everything is.
    pg_hi = got.first_seq - 1 if got.first_seq is not None else (hi if hi is not None else 2**62)
    if hi is not None:
        pg_hi = min(pg_hi, hi)
    if ascending:
        older = await _pg_range(room_id, lo=lo, hi=pg_hi, ascending=True, count=want,
                                since=cutoff) if lo <= pg_hi else []
    else:
        need = want - len(entries)
        older = await _pg_range(room_id, lo=lo, hi=pg_hi, ascending=False, count=need,
                                since=cutoff) if need > 0 else []
    # A message outside the window the script read the overlay for (a seq gap: a set-aside
    # entry; a lost counter) gets its overlay entry now.
    wlo, whi = got.window
    outside = [s for s in (*(seq for seq, _ in entries), *(m["seq"] for m in older)) if not wlo <= s <= whi]
    if outside:
        raws = await redis.hmget(keys.room_state(room_id), [str(s) for s in outside])
        for s, raw in zip(outside, raws):
            if raw is not None and (m := _cached(s, raw)) is not None:
                overlay[s] = m
    cached: list[dict[str, Any]] = []
    for seq, m in entries:
        best = _newest(overlay.get(seq), m)
        if best is not None and str(best.get("created_at") or "") >= since:
            cached.append(best)
    from_cache = list(cached)
    merged_older: list[dict[str, Any]] = []
    for row in older:
        best = _newest(row, overlay.get(row["seq"]))
        assert best is not None
        if best is not row:
            from_cache.append(best)
        if str(best.get("created_at") or "") >= since:
            merged_older.append(best)
    items = merged_older + cached if ascending else cached + merged_older
    has_more = len(items) > limit
    items = items[:limit]
    if not ascending:
        items.reverse()
    keep = {id(m) for m in items}
    return await _finish(redis, keys, settings, room_id, items, [m for m in from_cache if id(m) in keep],
                         viewer_id), has_more


async def get_message(*, redis: Redis, keys: Keys, settings: Settings, room_id: str, seq: int,
                      viewer_id: str | None = None) -> dict[str, Any] | None:
    """One message by seq (its latest state), from the cache or (below the stream's first entry) the database."""
    items, _ = await history(redis=redis, keys=keys, settings=settings, room_id=room_id,
                             before=seq + 1, after=seq - 1, limit=1, viewer_id=viewer_id)
    return items[0] if items and items[0]["seq"] == seq else None


async def changes_since(res: Resources | None = None, *, room_id: str, after_version: int, max_seq: int, limit: int,
                        viewer_id: str | None = None, redis: Redis | None = None, keys: Keys | None = None,
                        settings: Settings | None = None) -> tuple[list[dict[str, Any]], bool, int]:
    """The latest state of every message with seq <= max_seq changed after `after_version`
    (one entry per message), ascending by version, at most `limit`: (items, has_more,
    last_version = the room's change counter). Page on with the last item's version.

    Redis first (the unflushed changes and their overlay, one script), then PostgreSQL
    (`version > V` on the index messages_room_version) WITHOUT the seqs Redis named: their
    latest change is Redis's, the row may be older. The flush removes a change from Redis only
    after its commit, so a change is in one of the two reads; one made after the Redis read
    shows with its newer version or above last_version (the next call's)."""
    if res is not None:
        redis, keys, settings = res.redis, res.keys, res.settings
    assert redis is not None and keys is not None and settings is not None
    room_id = parse_uuid(room_id, RoomNotFound)
    want = limit + 1
    version, pairs, states = await scripts.CHANGES_READ(
        redis, [keys.room_changed(room_id), keys.room_state(room_id), keys.room_version(room_id)],
        [int(after_version), int(max_seq), want])
    redis_seqs = [int(pairs[i]) for i in range(0, len(pairs), 2)]
    found: dict[int, dict[str, Any]] = {}
    for s, raw in zip(redis_seqs, states):
        m = _cached(s, raw) if raw else None
        if m is not None:
            found[s] = m
    cutoff = retention_cutoff(settings)
    rows = await connections.get("default").execute_query_dict(
        f"SELECT {_COLUMNS} FROM messages WHERE room_id = $1 AND version > $2 AND seq <= $3"
        " AND created_at >= $5 AND NOT (seq = ANY($6::bigint[])) ORDER BY version LIMIT $4",
        [room_id, int(after_version), int(max_seq), want, cutoff, redis_seqs])
    from_pg = await _render_rows(rows)
    for m in from_pg:
        best = _newest(m, found.get(m["seq"]))
        if best is not None:
            found[m["seq"]] = best
    since = str(iso(cutoff))
    items = sorted((m for m in found.values() if str(m.get("created_at") or "") >= since and
                    _version(m) > after_version), key=_version)
    has_more = len(items) > limit or len(redis_seqs) > len(states)
    items = items[:limit]
    if version:
        last_version = int(version)
    else:  # Redis lost the counter: re-seeded exactly as a change would
        last_version = await changes.seed_version(redis, keys, room_id, await _pg_max_version(room_id))
    pg_ids = {id(m) for m in from_pg}
    items = await _finish(redis, keys, settings, room_id, items, [m for m in items if id(m) not in pg_ids],
                          viewer_id)
    return items, has_more, max(last_version, max((_version(m) for m in items), default=0))


async def _pg_max_version(room_id: str) -> int:
    rows = await connections.get("default").execute_query_dict(
        "SELECT GREATEST((SELECT COALESCE(MAX(version), 0) FROM messages WHERE room_id = $1),"
        " COALESCE((SELECT last_version FROM rooms WHERE id = $1), 0)) AS v", [room_id])
    return int(rows[0]["v"])


async def last_seqs(*, redis: Redis, keys: Keys, settings: Settings, room_ids: list[str]) -> dict[str, int]:
    """Each room's latest seq (0 for an empty room), for the WebSocket hello."""
    if not room_ids:
        return {}
    if settings.write_mode == "direct":
        rows = await connections.get("default").execute_query_dict(
            "SELECT id, last_seq FROM rooms WHERE id = ANY($1::uuid[])", [room_ids])
        found = {str(r["id"]): int(r["last_seq"]) for r in rows}
        return {rid: found.get(rid, 0) for rid in room_ids}
    values = await cache.counters(redis, keys, room_ids)
    out: dict[str, int] = {}
    for rid, value in zip(room_ids, values):
        if value is None:  # Redis lost the counter: re-seed it exactly as a send would
            value = await cache.seed_seq(redis, keys, rid, await _pg_max_seq(rid))
        out[rid] = value
    return out

