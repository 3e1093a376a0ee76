"""Messages as stored in PostgreSQL once the worker has flushed them from the cache."""

from __future__ import annotations

from tortoise import fields
from tortoise.contrib.postgres.fields import ArrayField
from tortoise.models import Model


class Message(Model):
    id = fields.UUIDField(primary_key=True)
    room = fields.ForeignKeyField("models.Room", related_name="messages", on_delete=fields.CASCADE)
    # Gap-free per room, allocated in Redis; (room, seq) makes flush retries idempotent.
    seq = fields.BigIntField()
    sender = fields.ForeignKeyField("models.User", related_name="messages", null=True, on_delete=fields.SET_NULL)
    kind = fields.CharField(max_length=8)  # text | image | file | system
    body = fields.TextField()
    file = fields.ForeignKeyField("models.File", related_name="messages", null=True, on_delete=fields.SET_NULL)
    client_id = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(db_index=True)
    # The lifecycle (app/lifecycle.py): written by the flush from the Redis overlay, in batches.
    edited_at = fields.DatetimeField(null=True)
    deleted = fields.BooleanField(default=False)  # a tombstone: body "" and file NULL, seq kept
    # The room's change counter at the last change (0: never changed); sync asks "version > V".
    version = fields.BigIntField(default=0)
    reply_to = fields.BigIntField(null=True)  # seq of the original in the same room
    mentions = ArrayField("text", null=True)  # lowercased usernames @mentioned (app/mentions.py)
    reactions = fields.JSONField(null=True)  # [{emoji, count, user_ids}] in first-reacted order

    class Meta:
        table = "messages"
        unique_together = (("room", "seq"),)
