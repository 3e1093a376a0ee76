"""Uploaded files and images (bytes live under MEDIA_ROOT, never under a client-chosen name)."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class File(Model):
    id = fields.UUIDField(primary_key=True)
    room = fields.ForeignKeyField("models.Room", related_name="files", on_delete=fields.CASCADE)
    uploader = fields.ForeignKeyField("models.User", related_name="files", null=True, on_delete=fields.SET_NULL)
    name = fields.CharField(max_length=255)  # the client's name, sanitised, for display and downloads
    mime = fields.CharField(max_length=128, null=True)  # sniffed, never the client's claim
    claimed_mime = fields.CharField(max_length=128, null=True)
    size = fields.BigIntField(default=0)
    status = fields.CharField(max_length=12, default="processing")  # processing|ready|rejected|expired
    reason = fields.CharField(max_length=255, null=True)
    storage_path = fields.CharField(max_length=255, null=True)  # relative to MEDIA_ROOT
    thumbnail_path = fields.CharField(max_length=255, null=True)
    body = fields.TextField(default="")
    client_id = fields.CharField(max_length=64, null=True)
    message_seq = fields.BigIntField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField(null=True, db_index=True)
    expired = fields.BooleanField(default=False)

    class Meta:
        table = "files"
