"""Cache entries the flush could not store: set aside so the room's flush goes on."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class DeadLetter(Model):
    """A cache entry the flush could not store, set aside so the flush goes on.

    One stream entry PostgreSQL refused for its data (e.g. a NUL in the body) or that does
    not parse as a message. Written in the transaction that commits the rest of its batch, so the
    flush may advance past it; kept for an operator to inspect (`make status` counts them)."""

    id = fields.BigIntField(primary_key=True)
    # No foreign key: the room may be deleted while its entries are being set aside.
    room_id = fields.UUIDField(db_index=True)
    seq = fields.BigIntField()
    message_id = fields.UUIDField(null=True)  # when the entry's "id" parses
    entry = fields.BinaryField()  # the raw "m" field as Redis held it (bytea: may contain NUL)
    # sha1 of entry: a re-run of the batch (crash before the Redis step) adds no second row,
    # while a different entry at the same seq (after a Redis rollback) still gets its own.
    digest = fields.CharField(max_length=40)
    error = fields.TextField()
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "dead_letters"
        unique_together = (("room_id", "seq", "digest"),)
