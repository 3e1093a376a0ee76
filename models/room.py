"""Rooms and memberships (roles, bans)."""

from __future__ import annotations

from enum import Enum

from tortoise import fields
from tortoise.models import Model


class Role(str, Enum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class Room(Model):
    id = fields.UUIDField(primary_key=True)
    name = fields.CharField(max_length=64)
    topic = fields.CharField(max_length=256, default="")
    is_private = fields.BooleanField(default=False)
    owner = fields.ForeignKeyField("models.User", related_name="owned_rooms", on_delete=fields.RESTRICT)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    # The highest seq PostgreSQL has seen for the room: CHAT_WRITE_MODE=direct allocates seqs
    # here; in cache mode the flush raises it to every batch's top, so a counter re-seeded
    # from PostgreSQL stays above seqs the retention prune deleted.
    last_seq = fields.BigIntField(default=0)
    # Likewise for the change counter (messages.version): a re-seeded counter stays above it.
    last_version = fields.BigIntField(default=0)

    class Meta:
        table = "rooms"


class Membership(Model):
    """A user's place in a room. A banned user keeps a row with banned=True and is not a member."""

    id = fields.BigIntField(primary_key=True)
    room = fields.ForeignKeyField("models.Room", related_name="memberships", on_delete=fields.CASCADE)
    user = fields.ForeignKeyField("models.User", related_name="memberships", on_delete=fields.CASCADE)
    role = fields.CharEnumField(Role, max_length=8, default=Role.MEMBER)
    banned = fields.BooleanField(default=False)
    joined_at = fields.DatetimeField(auto_now_add=True)
    # The read marker as the flush last wrote it; Redis (`reads`) holds the newer one.
    last_read_seq = fields.BigIntField(default=0)

    class Meta:
        table = "memberships"
        unique_together = (("room", "user"),)
