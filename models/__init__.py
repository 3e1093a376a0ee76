"""Tortoise ORM models, one module per aggregate. Imports nothing of ours."""

MODEL_MODULES = ["models.user", "models.token", "models.room", "models.message", "models.file", "models.dead_letter"]
