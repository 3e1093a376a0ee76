"""Message search over the rooms a user is a member of: the cache and PostgreSQL, merged.

Where a message may be, and who answers for it:
- Not in PostgreSQL yet (a room's stream entries after `flushed`), or changed in a way
  PostgreSQL may not hold yet (the room's `state` overlay): matched here, in Python.
  app/store/lua/search_cache.lua reads both for a room atomically; all rooms go on one
  pipeline (one round trip).
- Everything else: PostgreSQL, `to_tsvector('simple', body) @@ query` (exactly the
  expression of the GIN index messages_body_fts), among the SEARCH_CANDIDATES newest matches,
  ranked by ts_rank. Bounding the ranked set bounds the cost: ts_rank re-parses every body
  it ranks, and a common word matches a large share of a million rows.
Redis is read first and PostgreSQL second: the flush trims the stream only after its commit,
so an entry flushed in between is found twice (deduplicated by (room_id, seq), the higher
`version` wins) and never missed. A database hit the overlay knows a newer state of is
judged by that state (deleted: dropped; edited: matched against the new body), so a
deleted message is never found and an edited one only by its current body.

The query: its words (runs of letters and digits, lowercased; `_` and every other character
separate words, as PostgreSQL's parser splits them), so quotes, `&|!:*`, backslashes and
emoji are just separators and no input reaches to_tsquery's syntax: the tsquery is built
here, one quoted lexeme per word. A message matches when each word but the last is a word of
its body and the last is a prefix of one, so results follow typing: "meeting tomo" finds
"meeting tomorrow" ("meet tomorrow" does not: "meet" is not a word of it).

Order: cache hits first, newest first (they are the newest messages, or fresh edits), then
database hits by rank. A page is an offset into that list, recomputed per request: stable
while the caller's rooms are quiet; best effort otherwise (a message sent, edited or flushed
between two pages may shift the list, so an item can repeat or be skipped).

Known difference between the two matchers: PostgreSQL's parser keeps host names, e-mail
addresses, paths and decimals as single lexemes ("example.com", "3.14"), where the word rule
splits them; a flushed "see example.com" is found by "example" (a prefix) but not by
"example com", while a cached one is found by both.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from tortoise import connections

from app import rooms
from app.errors import ValidationFailed
from app.messages import retention_cutoff
from app.pagination import MAX_LIMIT, SEARCH, decode_cursor, encode_cursor
from app.resources import Resources
from app.schemas import file_out, message_out, message_view
from app.serialize import iso
from app.settings import Settings
from app.store import scripts
from app.store.keys import Keys
from models.file import File

log = logging.getLogger("chat.search")

SEARCH_CACHE = scripts.SCRIPTS["search_cache"]

# A word as PostgreSQL's 'simple' parser sees one in ordinary text: letters and digits, with
# `_` a separator ("foo_bar" is the lexemes foo and bar).
WORD = re.compile(r"[^\W_]+")

SNIPPET_CHARS = 160  # the longest snippet, ellipses excluded
SNIPPET_BEFORE = 40  # context kept before the first match when the body is cut
ELLIPSIS = "…"


# -- the query ---------------------------------------------------------------------

def words(text: str) -> list[str]:
    """The lowercased words of a text (the one tokenization, for queries and bodies alike)."""
    return [w.lower() for w in WORD.findall(text)]


@dataclass(frozen=True)
class Query:
    """The words of a query: every one but the last must be a word of the body, the last a prefix."""

    exact: tuple[str, ...]
    prefix: str

    def tsquery(self) -> str:
        """The to_tsquery('simple', ...) text: words are letters and digits only, so quoting
        them needs no escaping and no operator of the query syntax can appear."""
        return " & ".join([f"'{w}'" for w in self.exact] + [f"'{self.prefix}':*"])

    def word_matches(self, word: str) -> bool:
        return word in self.exact or word.startswith(self.prefix)

    def matches(self, body: str) -> bool:
        have = set(words(body))
        return all(w in have for w in self.exact) and any(w.startswith(self.prefix) for w in have)


def parse_query(settings: Settings, q: Any) -> Query:
    """The query's words; 422 `q` when it is empty, too long, or has no word to search for."""
    limit = settings.search_max_query_chars
    text = q.strip() if isinstance(q, str) else ""
    if not 1 <= len(text) <= limit:
        raise ValidationFailed({"q": f"must be 1-{limit} characters"})
    found = words(text)
    if not found:
        raise ValidationFailed({"q": "must contain a word (letters or digits) to search for"})
    *exact, last = found
    return Query(tuple(dict.fromkeys(exact)), last)


# -- snippets ------------------------------------------------------------------------

def _cut_start(body: str, start: int, limit: int) -> int:
    """Move a cut that falls inside a word forward past it (never beyond `limit`)."""
    if start == 0 or body[start - 1].isspace() or body[start].isspace():
        return start
    i = start
    while i < limit and not body[i].isspace():
        i += 1
    return i if i < limit else start


def _cut_end(body: str, end: int, limit: int) -> int:
    """Move a cut that falls inside a word back before it (never before `limit`)."""
    if end >= len(body) or body[end].isspace() or body[end - 1].isspace():
        return end
    i = end
    while i > limit and not body[i - 1].isspace():
        i -= 1
    return i if i > limit else end


def snippet(body: str, query: Query) -> tuple[str, list[list[int]]]:
    """Up to SNIPPET_CHARS of the body around its first match, cut at whole words, with "…"
    where cut, whitespace runs as one space; and the [start, end) offsets (in characters,
    i.e. Unicode code points) of every matching word in it."""
    first = next((m for m in WORD.finditer(body) if query.word_matches(m.group().lower())), None)
    start, end = 0, len(body)
    if len(body) > SNIPPET_CHARS:
        at = first.start() if first else 0
        start = max(0, at - SNIPPET_BEFORE)
        end = min(len(body), start + SNIPPET_CHARS)
        start = max(0, end - SNIPPET_CHARS)
        start = _cut_start(body, start, at)
        end = _cut_end(body, end, first.end() if first else start + 1)
    text = re.sub(r"\s+", " ", body[start:end]).strip()
    if start > 0:
        text = ELLIPSIS + text
    if end < len(body):
        text += ELLIPSIS
    marks = [[m.start(), m.end()] for m in WORD.finditer(text) if query.word_matches(m.group().lower())]
    return text, marks


# -- the cache side ----------------------------------------------------------------------

def _version(msg: dict[str, Any]) -> int:
    v = msg.get("version")
    return v if type(v) is int else 0


def _load(raw: str) -> dict[str, Any] | None:
    """A stored message JSON, or None for one that is not (the flush sets those aside; a
    search must not fail on it meanwhile)."""
    try:
        m = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return m if isinstance(m, dict) and type(m.get("seq")) is int else None


async def cache_states(redis: Redis, keys: Keys, room_ids: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """(room_id, seq) -> the latest stored-form message Redis holds that PostgreSQL may not:
    unflushed stream entries and overlay entries (the overlay is the later state of a seq)."""
    if not room_ids:
        return {}
    replies: list[Any] = []
    for _ in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            for rid in room_ids:
                SEARCH_CACHE.queue(pipe, [keys.room_log(rid), keys.room_flushed(rid), keys.room_state(rid)], [])
            replies = await pipe.execute(raise_on_error=False)
        if not any(isinstance(r, NoScriptError) for r in replies):
            break
        await SEARCH_CACHE.load(redis)  # Redis restarted or flushed its scripts: once more
    states: dict[tuple[str, int], dict[str, Any]] = {}
    for rid, reply in zip(room_ids, replies):
        if isinstance(reply, Exception):
            raise reply
        entries, overlay = reply
        for raw in entries:
            m = _load(raw)
            if m is not None:
                states[(rid, m["seq"])] = m
        for i in range(1, len(overlay), 2):
            m = _load(overlay[i])
            if m is None:
                continue
            key = (rid, m["seq"])
            prev = states.get(key)
            if prev is None or _version(m) >= _version(prev):
                states[key] = m
    for (rid, _seq), m in states.items():
        m["room_id"] = rid
    return states


# -- the database side ---------------------------------------------------------------

_PG_COLUMNS = ("id", "room_id", "seq", "sender_id", "kind", "body", "file_id", "client_id", "created_at",
               "edited_at", "deleted", "version", "reply_to", "mentions", "reactions")

# The database's candidates (the newest matches, then ranked) and, in the same round trip,
# ts_rank of the cache hits' bodies (the second branch), so both carry the same rank.
_SEARCH_SQL = (
    "WITH cand AS ("
    f" SELECT {', '.join('m.' + c for c in _PG_COLUMNS)} FROM messages m"
    " WHERE m.room_id = ANY($2::uuid[]) AND to_tsvector('simple', m.body) @@ to_tsquery('simple', $1)"
    " AND NOT m.deleted AND m.created_at >= $3"
    " ORDER BY m.created_at DESC, m.id DESC LIMIT $4)"
    f" SELECT {', '.join('c.' + c for c in _PG_COLUMNS)},"
    " ts_rank(to_tsvector('simple', c.body), to_tsquery('simple', $1)) AS rank, NULL::bigint AS cache_i"
    " FROM cand c"
    " UNION ALL"
    f" SELECT {', '.join(['NULL'] * len(_PG_COLUMNS))},"
    " ts_rank(to_tsvector('simple', t.b), to_tsquery('simple', $1)), t.i"
    " FROM unnest($5::text[]) WITH ORDINALITY AS t(b, i)"
)


async def _database_hits(res: Resources, args: list[Any]) -> list[dict[str, Any]]:
    """Run _SEARCH_SQL as an unnamed statement, planned for these very values.

    A cached prepared statement (what asyncpg and Tortoise use) switches to a generic plan
    after five runs, and the generic plan cannot know how common the words are: it ANDs the
    full-text bitmap with the rooms' index (measured 140 ms for a word in 70% of 200,000
    rows, where the custom plan walks created_at backwards and stops after the candidates,
    ~15 ms). A custom plan picks the GIN index for rare words and that walk for common ones."""
    async with res.pool().acquire() as conn:
        stmt = await conn.prepare(_SEARCH_SQL)
        return [dict(r) for r in await stmt.fetch(*args)]


async def _member_rooms(user_id: str) -> list[str]:
    rows = await connections.get("default").execute_query_dict(
        "SELECT room_id FROM memberships WHERE user_id = $1 AND NOT banned", [user_id])
    return [str(r["room_id"]) for r in rows]


def _stored_form(row: dict[str, Any], f: File | None) -> dict[str, Any]:
    """A messages row as the stored-form message (what the cache holds for the same message)."""
    msg = message_out(row, f)
    reactions = row.get("reactions")
    if isinstance(reactions, str):
        reactions = orjson.loads(reactions)
    msg.update(edited_at=iso(row["edited_at"]), deleted=bool(row["deleted"]), version=int(row["version"]),
               reply_to=row["reply_to"], mentions=list(row["mentions"] or []),
               reactions=reactions if isinstance(reactions, list) else [])
    return msg


async def _render(res: Resources, page: list[tuple[str, dict[str, Any]]],
                  states: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """The page's hits as stored-form messages: files with their current expiry (one query),
    reply quotes of database rows rendered from the original's current state."""
    file_ids = {str(h["file_id"]) for src, h in page if src == "pg" and h["file_id"] is not None}
    file_ids |= {str(h["file"]["id"]) for src, h in page if src == "cache" and h.get("file")}
    files = {str(f.id): f for f in await File.filter(id__in=list(file_ids))} if file_ids else {}
    out: list[dict[str, Any]] = []
    for src, h in page:
        if src == "pg":
            fid = str(h["file_id"]) if h["file_id"] is not None else None
            out.append(_stored_form(h, files.get(fid) if fid else None))
            continue
        msg = dict(h)
        if msg.get("file"):
            f = files.get(str(msg["file"]["id"]))
            # a file row gone with its retention period (or its room's) is expired: its bytes are
            msg["file"] = file_out(f) if f is not None else {**msg["file"], "expired": True}
        out.append(msg)
    await _quotes(res, out, states)
    return out


def _quoted_seq(msg: dict[str, Any]) -> int | None:
    """The seq a reply answers: a database row holds the seq, a stored message its quote."""
    ref = msg.get("reply_to")
    seq = ref.get("seq") if isinstance(ref, dict) else ref
    return seq if type(seq) is int else None


async def _quotes(res: Resources, msgs: list[dict[str, Any]], states: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Render each reply's quote from the original's current state, as history does: the
    cache's state when it has one, else PostgreSQL's row (a database row holds only the seq
    it answers; a cached reply's quote is its send-time snapshot)."""
    wanted = {(m["room_id"], _quoted_seq(m)) for m in msgs if _quoted_seq(m) is not None}
    wanted -= set(states)
    originals: dict[tuple[str, int], dict[str, Any]] = {}
    if wanted:
        rows = await connections.get("default").execute_query_dict(
            "SELECT m.room_id, m.seq, m.sender_id, m.body, m.deleted, f.name AS file_name"
            " FROM messages m LEFT JOIN files f ON f.id = m.file_id"
            " WHERE (m.room_id, m.seq) IN (SELECT * FROM unnest($1::uuid[], $2::bigint[]))",
            [[r for r, _ in wanted], [s for _, s in wanted]])
        for r in rows:
            originals[(str(r["room_id"]), int(r["seq"]))] = {
                "sender_id": str(r["sender_id"]) if r["sender_id"] is not None else None,
                "body": r["body"], "deleted": r["deleted"], "file": {"name": r["file_name"]} if r["file_name"] else None}
    chars = res.settings.reply_excerpt_chars
    for m in msgs:
        ref = m.get("reply_to")
        seq = _quoted_seq(m)
        if seq is None:
            continue
        orig = states.get((m["room_id"], seq)) or originals.get((m["room_id"], seq))
        if orig is None:
            if type(ref) is int:  # the original is past retention: a quote with nothing to show
                m["reply_to"] = {"seq": seq, "sender_id": None, "excerpt": "", "deleted": False}
            continue
        deleted = bool(orig.get("deleted"))
        body = orig.get("body") or ""
        excerpt = "" if deleted else body[:chars] if body else str((orig.get("file") or {}).get("name") or "")
        m["reply_to"] = {"seq": seq, "sender_id": orig.get("sender_id"), "excerpt": excerpt, "deleted": deleted}


# -- search ------------------------------------------------------------------------------

async def search(res: Resources, *, user_id: str, q: str, room_id: str | None = None, limit: int = 50,
                 cursor: str | None = None) -> dict[str, Any]:
    """A page of `{"items": [{message, room_id, snippet, highlights, rank}], "next_cursor"}`.

    `room_id`: only that room (404/403 as history when the caller is not a member). `limit`
    as parsed by the route (app.pagination.parse_limit); clamped to 1..MAX_LIMIT here too."""
    settings = res.settings
    query = parse_query(settings, q)
    at = decode_cursor(cursor, SEARCH)
    offset = at[0] if at else 0
    limit = max(1, min(int(limit), MAX_LIMIT))
    if room_id is not None:
        room = await rooms.require_member(room_id=room_id, user_id=user_id)
        room_ids = [str(room.id)]
    else:
        room_ids = await _member_rooms(user_id)
    if not room_ids:
        return {"items": [], "next_cursor": None}

    # 1. Redis first (see the module's docstring for why the order matters).
    states = await cache_states(res.redis, res.keys, room_ids)
    cutoff = retention_cutoff(settings)
    since = iso(cutoff) or ""
    cached = [m for m in states.values()
              if not m.get("deleted") and str(m.get("created_at") or "") >= since
              and isinstance(m.get("body"), str) and query.matches(m["body"])]
    cached.sort(key=lambda m: (str(m.get("created_at") or ""), m["seq"], m["room_id"]), reverse=True)
    cached = cached[:settings.search_candidates]

    # 2. PostgreSQL: the candidates, and the cache hits' ranks.
    rows = await _database_hits(res, [query.tsquery(), room_ids, cutoff, settings.search_candidates,
                                      [m["body"] for m in cached]])
    cache_rank = [0.0] * len(cached)
    newer_in_pg: set[tuple[str, int]] = set()
    db_hits: list[dict[str, Any]] = []
    for r in rows:
        if r["cache_i"] is not None:
            cache_rank[int(r["cache_i"]) - 1] = float(r["rank"])
            continue
        key = (str(r["room_id"]), int(r["seq"]))
        r["room_id"] = key[0]
        known = states.get(key)
        if known is not None and _version(known) >= int(r["version"]):
            continue  # the cache's state is the latest: judged above (matched, or deleted/edited away)
        if known is not None:
            newer_in_pg.add(key)  # changed and flushed after our Redis read: PostgreSQL's row wins
        db_hits.append(r)
    db_hits.sort(key=lambda r: (float(r["rank"]), r["created_at"], str(r["id"])), reverse=True)

    merged: list[tuple[str, dict[str, Any], float]] = [
        ("cache", m, rank) for m, rank in zip(cached, cache_rank) if (m["room_id"], m["seq"]) not in newer_in_pg]
    merged += [("pg", r, float(r["rank"])) for r in db_hits]
    window = merged[offset:offset + limit]
    messages = await _render(res, [(src, h) for src, h, _ in window], states)
    items = []
    for msg, (_, _, rank) in zip(messages, window):
        text, marks = snippet(msg.get("body") or "", query)
        items.append({"message": message_view(msg, user_id), "room_id": msg["room_id"], "snippet": text,
                      "highlights": marks, "rank": rank})
    more = len(merged) > offset + limit
    return {"items": items, "next_cursor": encode_cursor(SEARCH.position(offset + limit)) if more else None}
