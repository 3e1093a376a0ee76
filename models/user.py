"""Accounts."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class User(Model):
    id = fields.UUIDField(primary_key=True)
    username = fields.CharField(max_length=32)
    # Usernames are unique case-insensitively: the lower-cased copy carries the index.
    username_lower = fields.CharField(max_length=32, unique=True)
    display_name = fields.CharField(max_length=64)
    password_hash = fields.CharField(max_length=255)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "users"
