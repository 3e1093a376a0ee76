"""Fixtures of the worker tests: `pool` (the asyncpg pool behind Tortoise) lives in tests/conftest.py."""
