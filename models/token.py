"""Refresh tokens, grouped in families (one family per login).

A refresh token is used once; presenting a used one revokes its whole family.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class TokenFamily(Model):
    id = fields.UUIDField(primary_key=True)
    user = fields.ForeignKeyField("models.User", related_name="token_families", on_delete=fields.CASCADE)
    created_at = fields.DatetimeField(auto_now_add=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "token_families"


class RefreshToken(Model):
    jti = fields.UUIDField(primary_key=True)
    family = fields.ForeignKeyField("models.TokenFamily", related_name="tokens", on_delete=fields.CASCADE)
    issued_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)

    class Meta:
        table = "refresh_tokens"
