"""Message ids are RFC 9562 version-7 UUIDs, ordered by creation time."""

from __future__ import annotations

import time
import uuid

from app.ids import uuid7


def test_uuid7_is_a_valid_version_7_uuid() -> None:
    value = uuid.UUID(uuid7())
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_uuid7_starts_with_the_current_millisecond_and_sorts_by_time() -> None:
    before = time.time_ns() // 1_000_000
    first = uuid7()
    time.sleep(0.002)
    second = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(first).int >> 80 <= after
    assert first < second  # the string form sorts like the timestamps
    assert len({uuid7() for _ in range(10_000)}) == 10_000


def test_now_iso_matches_the_api_timestamp_format() -> None:
    import re
    from datetime import datetime, timezone

    from app.serialize import iso, now_iso

    before = datetime.now(timezone.utc).replace(microsecond=0)
    stamp = now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before <= parsed <= datetime.now(timezone.utc)
    assert iso(parsed) == stamp
