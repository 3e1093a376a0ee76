"""@mentions: the one parser of `@username` in a message body.

A mention is `@` followed by a name in the username alphabet (API.md: 3-32 of
`A-Z a-z 0-9 _ . -`), not preceded by a word character (so `a@b.org` mentions
nobody), with trailing `.`/`-` dropped ("thanks @bob." mentions bob). Names are
lowercased (usernames are unique case-insensitively) and kept in first-seen order.
The accept path stores them in the message (`mentions`), counts them per reader in
Redis (`mnt:<name>`, app/store/keys.py) and in PostgreSQL (`messages.mentions`).
Lua never parses bodies: every script gets the names from here.
"""

from __future__ import annotations

import re

_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_.\-]{3,32})")


def parse(body: str, limit: int = 20) -> list[str]:
    """The distinct lowercased usernames `body` @mentions, at most `limit`, in order."""
    if "@" not in body:  # the common case costs one scan
        return []
    out: list[str] = []
    for match in _MENTION.finditer(body):
        name = match.group(1).rstrip(".-").lower()
        if len(name) >= 3 and name not in out:
            out.append(name)
            if len(out) >= limit:
                break
    return out
