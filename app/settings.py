"""Settings: read once from the environment (and `.env.local`), validated, typed.

Nothing else in the code base reads `os.environ`: every module receives a
`Settings` (or the values it needs) explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me-0123456789"
ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe for the chosen environment."""


def _env_file(path: Path) -> dict[str, str]:
    """Parse a KEY=VALUE file (comments and blank lines ignored, quotes stripped)."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip().removeprefix("export ").strip()] = value
    return values


# Environment variables whose name is not simply the upper-cased field name.
_ALIASES = {"write_mode": "CHAT_WRITE_MODE"}


def env_name(field_name: str) -> str:
    """The environment variable that sets a field."""
    return _ALIASES.get(field_name, field_name.upper())


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Settings:
    """Every tunable of the server, the worker and the scheduler.

    Field names map to upper-case environment variables (`port` <- `PORT`).
    Defaults are development defaults; README.md lists them all.
    """

    chat_env: str = "development"  # development | test | production
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "INFO"
    # `make run` (app.ops.launcher) only: auto = start embedded PostgreSQL/Redis for whichever is
    # neither configured nor reachable; always = embed both; never = use the URLs or fail.
    embedded_servers: str = "auto"
    var_dir: str = str(ROOT / "var")  # embedded servers' data: var/pg, var/redis

    database_url: str = "postgres://postgres@127.0.0.1:5432/chat"
    db_pool_max: int = 10
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis connections per process; a request waits (up to 10 s) for one when all are busy.
    redis_pool_max: int = 256
    # Prefix of every Redis key and channel (and the Dramatiq namespace), so that
    # several deployments or test sessions can share one Redis.
    redis_prefix: str = "chat"
    # In production the server refuses to start when Redis keeps nothing on disk
    # (acknowledged messages would be lost on a Redis restart) unless this is set.
    allow_redis_without_persistence: bool = False
    # A Redis that stops answering must give 503s within seconds, not hang every request.
    redis_connect_timeout_s: float = 2.0
    redis_socket_timeout_s: float = 5.0

    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: str = "HS256"
    jwt_issuer: str = "chat-server"
    jwt_audience: str = "chat-clients"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    # argon2id password hashing cost (OWASP minimum: t=2, m=19 MiB); tests and load runs lower it.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456

    request_max_bytes: int = 1024 * 1024  # JSON bodies; uploads have their own limit
    # Rate limits: N events per window, per user (per IP for login/register).
    rate_messages: int = 20
    rate_messages_window_s: int = 10
    rate_auth: int = 20
    rate_auth_window_s: int = 60
    rate_limit_strikes: int = 5  # rate-limited WS frames tolerated before close 4429
    # Per-user limits on what costs the server most (checked in Redis before PostgreSQL).
    rate_uploads: int = 10
    rate_uploads_window_s: int = 60
    rate_rooms: int = 10  # rooms created
    rate_rooms_window_s: int = 60
    rate_joins: int = 30  # joins and member adds
    rate_joins_window_s: int = 60

    ws_allowed_origins: tuple[str, ...] = ("http://localhost:8000", "http://127.0.0.1:8000")
    ws_max_frame_bytes: int = 64 * 1024
    ws_heartbeat_s: int = 20
    ws_outbox_frames: int = 1000  # frames queued for one slow client before it is closed (1013)
    message_max_chars: int = 4000
    idempotency_ttl_s: int = 24 * 3600
    # A room whose cache is fully flushed and that stays idle this long loses its Redis
    # keys (log tail, counters, member set); they are rebuilt from PostgreSQL on next use.
    room_cache_idle_ttl_s: int = 7 * 24 * 3600
    write_mode: str = "cache"  # cache | direct (CHAT_WRITE_MODE)

    flush_batch_size: int = 5000
    cache_tail: int = 200
    flush_backlog_threshold: int = 1000
    # Renewed every batch, so it only has to outlast one batch; short, so a room whose
    # flushing worker was killed is picked up again within seconds.
    flush_lease_s: int = 10
    # A worker silent this long is dead: Dramatiq requeues the jobs it had fetched.
    broker_heartbeat_timeout_s: int = 10
    retention_days: int = 30
    prune_batch_size: int = 5000
    flush_cron: str = "* * * * *"
    sweep_cron: str = "0 * * * *"
    prune_cron: str = "0 4 * * *"
    # Membership reconcile: every room's Redis member set compared with PostgreSQL and repaired.
    reconcile_cron: str = "*/5 * * * *"

    media_root: str = str(ROOT / "media")
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    thumbnail_px: int = 320
    image_ttl_days: int = 7
    file_ttl_days: int = 14
    # Signed media links (GET /files/{id}/url) work this long: enough for an <img> to load.
    media_url_ttl_s: int = 300
    allowed_mime: tuple[str, ...] = (
        "image/png", "image/jpeg", "image/gif", "image/webp",
        "application/pdf", "text/plain", "application/zip",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
    )

    @property
    def production(self) -> bool:
        return self.chat_env == "production"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, env_file: Path | None = ROOT / ".env.local") -> "Settings":
        """Build settings from `env` (default os.environ) over the `.env.local` defaults."""
        source: dict[str, str] = _env_file(env_file) if env_file else {}
        source.update(os.environ if env is None else env)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f.name)
            if name not in source:
                continue
            raw = source[name]
            try:
                kwargs[f.name] = _coerce(raw, f.default)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r}: {exc}") from None
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse unsafe or impossible combinations; raise SettingsError."""
        if self.chat_env not in ("development", "test", "production"):
            raise SettingsError("CHAT_ENV must be development, test or production")
        if self.embedded_servers not in ("auto", "always", "never"):
            raise SettingsError("EMBEDDED_SERVERS must be auto, always or never")
        if self.write_mode not in ("cache", "direct"):
            raise SettingsError("CHAT_WRITE_MODE must be cache or direct")
        if self.jwt_algorithm not in ("HS256", "HS384", "HS512"):
            raise SettingsError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        if self.production:
            if self.jwt_secret == DEV_JWT_SECRET:
                raise SettingsError("JWT_SECRET is the development default; set a real secret in production")
            if len(self.jwt_secret.encode()) < 32:
                raise SettingsError("JWT_SECRET must be at least 32 bytes in production")
        for name in ("port", "workers", "access_token_ttl_s", "refresh_token_ttl_s", "flush_batch_size",
                     "max_upload_bytes", "ws_max_frame_bytes", "ws_heartbeat_s", "rate_messages",
                     "rate_messages_window_s", "message_max_chars"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()} must be positive")


def _coerce(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return _csv(raw)
    return raw
