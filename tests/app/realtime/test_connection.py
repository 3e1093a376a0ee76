"""Acks in event order on one connection, the fan-out gap, and stale joins/leaves in the registry."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from app.realtime import connection
from app.realtime.connection import Connection
from app.realtime.events import MESSAGE_HEAD
from app.realtime.registry import Registry
from app.realtime.fanout import dispatch
from app.serialize import dumps


class FakeSocket:
    """What Connection needs of a socket when it cannot write raw frames: send() and close()."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def message(room: str, seq: int, sender: str, client_id: str | None = None) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "room_id": room, "seq": seq, "sender_id": sender, "kind": "text",
            "body": f"m{seq}", "file": None, "client_id": client_id, "created_at": "2026-01-01T00:00:00.000Z"}


def event(msg: dict[str, Any]) -> str:
    return MESSAGE_HEAD + dumps(msg) + "}"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def kinds(ws: FakeSocket) -> list[tuple[str, int | None]]:
    return [(f["type"], (f.get("message") or {}).get("seq")) for f in ws.frames]


@pytest.fixture
def fast_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "ACK_FALLBACK_S", 0.02)


async def test_a_late_event_stream_never_lets_an_ack_overtake_an_earlier_message(fast_fallback: None) -> None:
    reg, ws = Registry(), FakeSocket()
    conn = Connection(ws, "me", registry=reg)
    reg.add(conn)
    reg.attach(conn, ["r"])
    conn.start()
    earlier, mine = message("r", 1, "other"), message("r", 2, "me", "c2")
    conn.expect_ack(mine, reg.gen)
    await asyncio.sleep(0.2)  # ten fallback periods: the stream lags, it is not broken
    await settle()
    assert kinds(ws) == []  # before the fix: ack(2) went out here, ahead of message(1)
    reg.to_room("r", event(earlier))
    reg.to_room("r", event(mine), conn.id)
    await settle()
    assert kinds(ws) == [("message", 1), ("ack", 2)]
    assert ws.frames[1]["client_id"] == "c2"
    conn.stop()


async def test_a_gap_resyncs_then_acks_directly_and_late_events_never_ack_twice(fast_fallback: None) -> None:
    reg, ws = Registry(), FakeSocket()
    conn = Connection(ws, "me", max_queue=5000, registry=reg)
    reg.add(conn)
    reg.attach(conn, ["r"])
    conn.start()
    # Far more than the 1,000 after which the old code forgot which acks it had sent directly.
    sent = [message("r", i, "me", f"c{i}") for i in range(1, 1206)]
    for m in sent:
        conn.expect_ack(m, reg.gen)
    reg.fanout_gap()  # the subscription dropped and is back: those events are lost
    await settle()
    assert ws.frames[0] == {"type": "resync", "room_id": None, "reason": "fanout_gap"}
    assert kinds(ws)[1:] == [("ack", m["seq"]) for m in sent]  # in seq order, right after the resync
    # Events that were already on the new subscription still come: no second ack.
    for m in sent:
        reg.to_room("r", event(m), conn.id)
    await asyncio.sleep(0.1)
    await settle()
    assert len(ws.frames) == 1 + len(sent)
    conn.stop()


async def test_a_stream_stuck_past_the_give_up_time_resyncs_the_room_then_acks(
        fast_fallback: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "ACK_GIVE_UP_S", 0.1)
    reg, ws = Registry(), FakeSocket()
    conn = Connection(ws, "me", registry=reg)
    reg.add(conn)
    reg.attach(conn, ["r"])
    conn.start()
    mine = message("r", 7, "me", "c7")
    conn.expect_ack(mine, reg.gen)
    await asyncio.sleep(0.3)
    await settle()
    assert ws.frames[0] == {"type": "resync", "room_id": "r", "reason": "fanout_gap"}
    assert kinds(ws)[1:] == [("ack", 7)]
    reg.to_room("r", event(mine), conn.id)  # the event after all: ignored
    await settle()
    assert len(ws.frames) == 2
    conn.stop()


def test_registry_ignores_a_join_older_than_the_leave_it_follows() -> None:
    reg = Registry()
    conn = Connection(FakeSocket(), "u")
    reg.add(conn)
    joined = dumps({"type": "member_joined"})
    left = dumps({"type": "member_left"})
    dispatch(reg, f"j:r:u:5||{joined}")
    assert conn.rooms == {"r"}
    dispatch(reg, f"l:r:u:6||{left}")
    assert conn.rooms == set()
    dispatch(reg, f"j:r:u:5||{joined}")  # the join's event arriving late
    assert conn.rooms == set() and "r" not in reg.by_room
    dispatch(reg, f"j:r:u:7||{joined}")  # a real re-join
    assert conn.rooms == {"r"}
    dispatch(reg, f"d:r||{dumps({'type': 'room_deleted'})}")
    dispatch(reg, f"j:r:u:8||{joined}")  # a join committed before the delete, published after it
    assert conn.rooms == set()


def test_a_new_connection_skips_rooms_whose_membership_changed_while_it_read_them() -> None:
    reg = Registry()
    conn = Connection(FakeSocket(), "u")
    reg.add(conn)
    since = reg.tick
    # While the handshake reads PostgreSQL (which still lists r1 and r2): a kick from r1 ...
    dispatch(reg, f"l:r1:u:3||{dumps({'type': 'member_left'})}")
    reg.attach_fresh(conn, ["r1", "r2"], since)
    assert conn.rooms == {"r2"}


def test_close_family_closes_only_that_login() -> None:
    reg = Registry()
    a = Connection(FakeSocket(), "u", family="fam-a")
    b = Connection(FakeSocket(), "u", family="fam-b")
    for c in (a, b):
        reg.add(c)
    dispatch(reg, "f:u:fam-a||{}")
    assert a.closing and not b.closing


async def test_token_expiries_close_in_time_order_with_one_timer_and_skip_connections_gone() -> None:
    reg = Registry()
    late, early, gone = (Connection(FakeSocket(), u) for u in ("late", "early", "gone"))
    for c in (late, early, gone):
        reg.add(c)
        c.start()
    reg.close_at(late, 0.15, 4401, "token expired")
    reg.close_at(early, 0.05, 4401, "token expired")  # earlier than the armed timer: re-armed
    reg.close_at(gone, 0.05, 4401, "token expired")
    reg.remove(gone)
    gone.stop()
    await asyncio.sleep(0.1)
    await settle()
    assert early.ws.closed == (4401, "token expired") and late.ws.closed is None
    await asyncio.sleep(0.1)
    await settle()
    assert late.ws.closed == (4401, "token expired")
    assert gone.ws.closed is None  # it left before its expiry
    assert reg._expiries == [] and reg._expiry_timer is None


async def test_expiries_of_connections_that_left_do_not_pile_up() -> None:
    reg = Registry()
    for _ in range(3000):
        c = Connection(FakeSocket(), "u")
        reg.add(c)
        reg.close_at(c, 900.0, 4401, "token expired")
        reg.remove(c)
    assert len(reg._expiries) <= 1024 + 1
    reg._expiry_timer.cancel()
