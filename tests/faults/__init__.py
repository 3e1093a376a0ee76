"""Fault suite: real processes, own Redis and PostgreSQL, kills and stalls (issue 9)."""
