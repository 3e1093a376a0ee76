"""The event codec (app/realtime/events.py): the one place the fan-out wire format is spelled."""

from __future__ import annotations

import uuid

import orjson
from redis.asyncio import Redis

from app import messages
from app.realtime import events
from app.resources import Resources
from app.serialize import dumps
from app.store import member_sets
from app.store.keys import Keys

MESSAGE = {"id": "0190a0b0-0000-7000-8000-000000000001", "room_id": "r", "seq": 7, "sender_id": "u",
           "kind": "text", "body": 'é "quoted" | pipes', "file": None, "client_id": "c-1",
           "created_at": "2026-01-01T00:00:00.000000Z"}


def test_a_frame_round_trips_with_its_route_and_exclusion() -> None:
    frame = {"type": "typing", "room_id": "r", "user_id": "u"}
    for exclude in ("", "conn-1", "~user-1"):
        route, got_exclude, text = events.decode(events.encode("r:r", frame, exclude))
        assert (route, got_exclude, orjson.loads(text)) == ("r:r", exclude, frame)


def test_a_body_with_pipes_stays_whole() -> None:
    # Only the first two "|" separate: the frame JSON may hold any number of them.
    payload = events.encode(events.room_route("r"), events.message_frame(dumps(MESSAGE)), "c")
    route, exclude, text = events.decode(payload)
    assert (route, exclude) == ("r:r", "c") and orjson.loads(text)["message"] == MESSAGE


def test_message_events_are_the_bytes_clients_always_got() -> None:
    js = dumps(MESSAGE)
    before = f'r:r|conn-9|{{"type":"message","message":{js}}}'  # the literal every producer spelled
    assert events.message_payload("r", js, "conn-9") == before
    prefix, suffix = events.message_payload_parts("r", "conn-9")
    assert prefix + js + suffix == before  # what the accept and re-sequence scripts publish
    frame = events.decode(before)[2]
    assert events.is_message_frame(frame) and events.message_of_frame(frame) == js
    assert orjson.loads(frame) == {"type": "message", "message": MESSAGE}
    assert not events.is_message_frame(dumps({"type": "typing", "message": "x"}))


async def test_the_accept_script_publishes_what_the_codec_encodes(redis: Redis, keys: Keys,
                                                                  resources: Resources) -> None:
    # A system message to a room Redis knows: the whole send stays in Redis (no PostgreSQL).
    rid = str(uuid.uuid4())
    await member_sets.room_created(redis, keys, rid, ["u1"])
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.events_channel())
    await pubsub.get_message(timeout=5)
    try:
        msg, created = await messages.accept_message(resources, room_id=rid, sender_id=None, body="hello",
                                                     kind="system", conn_id="conn-1")
        got = await pubsub.get_message(timeout=5)
    finally:
        await pubsub.aclose()
    assert created and got is not None
    assert got["data"] == events.message_payload(rid, dumps(msg), "conn-1")
