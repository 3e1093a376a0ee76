"""Identifiers: making them (time-ordered UUIDs) and reading them from clients (UUIDs, bigints).

A message id made with uuid4 lands at a random place of the primary-key index, so
every flushed batch touches pages all over it; a version-7 id starts with the
millisecond timestamp, so a batch appends to the right edge of the index. On this
machine that took the flush from about 100k to about 180-200k rows/s.

Reading: every id a client sends goes through one of the parsers here, and each keeps the
API's answer for a bad one. A malformed UUID in a path or body is the 404 of what it names
(`parse_uuid(raw, RoomNotFound)`: no such room, as for an unknown one); a number outside a
PostgreSQL bigint, or not a number, is 422 naming the field (`parse_bigint`).
"""

from __future__ import annotations

import functools
import os
import time
import uuid

from app.errors import ChatError, ValidationFailed

# PostgreSQL bigint: every seq, id and count the API takes is stored in one.
BIGINT_MAX = 2**63 - 1

_RAND_A_MASK = (1 << 12) - 1
_RAND_B_MASK = (1 << 62) - 1
_UUID_CHARS = 36  # the canonical text form; a client may send any form uuid.UUID reads


def uuid7() -> str:
    """A version-7 UUID string: 48-bit Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (((rand >> 62) & _RAND_A_MASK) << 64) \
        | (0b10 << 62) | (rand & _RAND_B_MASK)
    h = "%032x" % value  # formatted directly: a uuid.UUID object only to str() it cost ~3x as much
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def canonical_uuid(raw: object) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID, or None when `raw` is not one."""
    try:
        return _canonical(str(raw))
    except (ValueError, TypeError, AttributeError):
        return None


@functools.lru_cache(maxsize=2048)
def _canonical(raw: str) -> str:
    """Valid ids only are cached (an exception is not): every send checks its room id."""
    return str(uuid.UUID(raw))


def parse_uuid(raw: object, error: type[ChatError]) -> str:
    """The canonical form of a UUID id, or `error` (the 404 of what it names) when it is not one."""
    value = canonical_uuid(raw)
    if value is None:
        raise error()
    return value


def is_canonical_uuid(value: object, *, exact: bool = False) -> bool:
    """A string UUID (at most 36 characters: our own text form); `exact`: already canonical."""
    if type(value) is not str or len(value) > _UUID_CHARS:
        return False
    found = canonical_uuid(value)
    return found is not None and (not exact or found == value)


def is_bigint(value: object, minimum: int = 0, maximum: int = BIGINT_MAX) -> bool:
    """An int (not a bool) in [minimum, maximum]."""
    return type(value) is int and minimum <= value <= maximum


def parse_bigint(raw: str | None, name: str, minimum: int, maximum: int = BIGINT_MAX) -> int | None:
    """A query value such as `before`, `after`, `limit`: None when absent or empty, else an int in
    [minimum, maximum]; 422 naming `name` otherwise."""
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValidationFailed({name: "must be an integer"}) from None
    if value < minimum:
        raise ValidationFailed({name: f"must be at least {minimum}"})
    if value > maximum:
        raise ValidationFailed({name: f"must be at most {maximum}"})
    return value
