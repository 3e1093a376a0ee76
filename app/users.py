"""Users: lookup by id and prefix search (the user object is app.schemas.user_out)."""

from __future__ import annotations

import re

from app.errors import UserNotFound
from app.ids import parse_uuid
from models.user import User

USERNAME_CHARS = "A-Za-z0-9_.-"
_USERNAME_PREFIX = re.compile(rf"[{USERNAME_CHARS}]*")


def could_be_username(text: str) -> bool:
    """True when `text` only has username characters (so it is worth asking PostgreSQL).

    Also keeps NUL and other bytes PostgreSQL refuses out of queries: a 500 for bad input.
    """
    return len(text) <= 32 and _USERNAME_PREFIX.fullmatch(text) is not None


async def get_user(user_id: str) -> User:
    """The user with this id; 404 user_not_found for an unknown or malformed id."""
    user = await User.get_or_none(id=parse_uuid(user_id, UserNotFound))
    if user is None:
        raise UserNotFound()
    return user


async def search_users(q: str, *, limit: int, after: str | None = None) -> tuple[list[User], str | None]:
    """Users whose username starts with `q` (any case), by lower-cased username, after `after`.

    Returns the page and the position of its last row when more follow. `%` and `_`
    in `q` are literal: Tortoise's startswith escapes them in the LIKE pattern.
    """
    if not could_be_username(q):
        return [], None  # no username has other characters: nothing to look up
    qs = User.all()
    if q:
        qs = qs.filter(username_lower__startswith=q.lower())
    if after is not None:
        qs = qs.filter(username_lower__gt=after)
    rows = await qs.order_by("username_lower").limit(limit + 1)
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, rows[-1].username_lower
    return rows, None
