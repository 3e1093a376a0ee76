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


# -- reading ids from clients ------------------------------------------------------------

def test_parse_uuid_canonicalises_or_answers_the_404_of_what_it_names() -> None:
    import pytest

    from app.errors import FileNotFound, RoomNotFound
    from app.ids import parse_uuid

    rid = str(uuid.uuid4())
    assert parse_uuid(rid.upper(), RoomNotFound) == rid
    assert parse_uuid("{" + rid + "}", RoomNotFound) == rid  # any form uuid.UUID reads, as before
    for bad in ("", "nope", "1234", rid + "0", "../etc", None, 7):
        with pytest.raises(RoomNotFound):
            parse_uuid(bad, RoomNotFound)
    with pytest.raises(FileNotFound):
        parse_uuid("x", FileNotFound)


def test_is_canonical_uuid_is_for_our_own_text_form() -> None:
    from app.ids import is_canonical_uuid

    rid = str(uuid.uuid4())
    assert is_canonical_uuid(rid) and is_canonical_uuid(rid, exact=True)
    assert is_canonical_uuid(rid.upper()) and not is_canonical_uuid(rid.upper(), exact=True)
    assert not is_canonical_uuid("urn:uuid:" + rid)  # longer than 36: not a form we hand out
    assert not is_canonical_uuid(uuid.UUID(rid))  # not a string


def test_parse_bigint_names_the_field_in_its_422() -> None:
    import pytest

    from app.errors import ValidationFailed
    from app.ids import BIGINT_MAX, parse_bigint

    assert parse_bigint(None, "before", 1) is None and parse_bigint("", "before", 1) is None
    assert parse_bigint(str(BIGINT_MAX), "before", 1) == BIGINT_MAX
    for raw, reason in (("x", "must be an integer"), ("0", "must be at least 1"),
                        (str(BIGINT_MAX + 1), f"must be at most {BIGINT_MAX}")):
        with pytest.raises(ValidationFailed) as err:
            parse_bigint(raw, "before", 1)
        assert err.value.details == {"fields": {"before": reason}}
