"""Settings: read once from the environment (and `.env.local`), validated, typed.

Nothing else in the code base reads `os.environ`: every module receives a
`Settings` (or the values it needs) explicitly.

Built on pydantic-settings. Invariants kept from the hand-written parser it replaced:

- a field `port` is set by the variable `PORT` (upper-cased name; `write_mode` is
  `CHAT_WRITE_MODE`), matched case-sensitively; nothing else is read;
- `Settings.load()` reads `.env.local` first and lets the environment win over it;
  `Settings(...)` alone reads neither (defaults plus the keyword arguments given);
- lists (`WS_ALLOWED_ORIGINS`, `ALLOWED_MIME`) are comma-separated, not JSON;
- booleans accept 1/0, true/false, yes/no, on/off (and empty for false);
- a bad value is one `SettingsError` naming the variable, its value and what is wrong,
  never a traceback through pydantic's internals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from dotenv import dotenv_values
from pydantic import AliasGenerator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource,
                               SettingsConfigDict)

DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me-0123456789"
ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe for the chosen environment."""


# Environment variables whose name is not simply the upper-cased field name.
_ALIASES = {"write_mode": "CHAT_WRITE_MODE"}


def env_name(field_name: str) -> str:
    """The environment variable that sets a field."""
    return _ALIASES.get(field_name, field_name.upper())


Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]
CSV = Annotated[tuple[str, ...], NoDecode]  # NoDecode: the variable is "a,b", not JSON


class Settings(BaseSettings):
    """Every tunable of the server, the worker and the scheduler.

    Field names map to upper-case environment variables (`port` <- `PORT`).
    Defaults are development defaults; README.md lists them all. Immutable: derive a
    variant with `replace(**changes)` (validated like a load).
    """

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        extra="ignore",  # the environment holds much else; .env.local may hold comments' kin
        alias_generator=AliasGenerator(validation_alias=env_name),
        validate_by_name=True,  # Settings(port=1) in code and tests, PORT=1 from the environment
        validate_by_alias=True,
        validate_default=False,
    )

    chat_env: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    port: Positive = 8000
    workers: Positive = 1
    # The listen socket's accept queue (the kernel caps it at net.core.somaxconn). Sanic's
    # default, 100, overflowed in a reconnect storm (500 handshakes in flight): every dropped
    # SYN waits out a 1 s, then 3 s retransmit, which held connects/s far below the core's rate.
    listen_backlog: Positive = 2048
    # The worker and the scheduler run at this niceness (0-19, set in their own processes): on a
    # shared core the flush and image conversion yield to the server's live traffic.
    worker_nice: Annotated[int, Field(ge=0, le=19)] = 10
    worker_uvloop: bool = True  # the worker's event loop: uvloop (false: the stdlib loop)
    worker_threads: Positive = 4  # `make run`'s worker: Dramatiq --threads (jobs in flight at once)
    log_level: str = "INFO"
    # `make run` (app.ops.launcher) only: auto = start embedded PostgreSQL/Redis for whichever is
    # neither configured nor reachable; always = embed both; never = use the URLs or fail.
    embedded_servers: Literal["auto", "always", "never"] = "auto"
    var_dir: str = str(ROOT / "var")  # embedded servers' data: var/pg, var/redis

    database_url: str = "postgres://postgres@127.0.0.1:5432/chat"
    db_pool_max: Positive = 10
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Cluster: REDIS_URL names any one node, the client discovers the others
    # (app/store/client.py); keys use the cluster layout (app/store/keys.py).
    redis_cluster: bool = False
    # Fan-out channels (app/realtime/fanout.py): "global" = one channel every process receives
    # in full; "rooms" = a channel per room and per user, each process subscribing only to those
    # its own connections need (decode work per process shrinks as processes are added).
    fanout_channels: Literal["global", "rooms"] = "global"
    # FANOUT_CHANNELS=rooms only: a channel no connection needs is dropped this long after (a
    # reconnect within it costs no round trip); a connect waits at most this long for its
    # channels; a room subscribed after a join catches up at most this many stream entries
    # (more: its connections get a resync).
    fanout_unsub_delay_s: Seconds = 1.0
    fanout_ready_timeout_s: Seconds = 5.0
    fanout_catch_up_max: Positive = 1000
    # Redis connections per process; a request waits (up to 10 s) for one when all are busy.
    redis_pool_max: Positive = 256
    # Prefix of every Redis key and channel (and the Dramatiq namespace), so that
    # several deployments or test sessions can share one Redis.
    redis_prefix: str = "chat"
    # In production the server refuses to start when Redis keeps nothing on disk
    # (acknowledged messages would be lost on a Redis restart) unless this is set.
    allow_redis_without_persistence: bool = False
    # A Redis that stops answering must give 503s within seconds, not hang every request.
    redis_connect_timeout_s: Seconds = 2.0
    redis_socket_timeout_s: Seconds = 5.0

    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "chat-server"
    jwt_audience: str = "chat-clients"
    access_token_ttl_s: Positive = 900
    # Access tokens each process keeps after verifying them once (app/tokens.py; 0: decode
    # every time). About 200 bytes each; a hit still checks expiry, and logout is checked anyway.
    token_cache_size: NonNegative = 20_000
    refresh_token_ttl_s: Positive = 30 * 24 * 3600
    # argon2id password hashing cost (OWASP minimum: t=2, m=19 MiB); tests and load runs lower it.
    argon2_time_cost: Positive = 2
    argon2_memory_kib: Positive = 19456

    request_max_bytes: Positive = 1024 * 1024  # JSON bodies; uploads have their own limit
    # Rate limits: N events per window, per user (per IP for login/register).
    rate_messages: Positive = 20
    rate_messages_window_s: Positive = 10
    rate_auth: Positive = 20
    rate_auth_window_s: Positive = 60
    rate_limit_strikes: Positive = 5  # rate-limited WS frames tolerated before close 4429
    # Per-user limits on what costs the server most (checked in Redis before PostgreSQL).
    rate_uploads: Positive = 10
    rate_uploads_window_s: Positive = 60
    rate_rooms: Positive = 10  # rooms created
    rate_rooms_window_s: Positive = 60
    rate_joins: Positive = 30  # joins and member adds
    rate_joins_window_s: Positive = 60
    rate_changes: Positive = 60  # edits, deletes and reactions
    rate_changes_window_s: Positive = 10

    ws_allowed_origins: CSV = ("http://localhost:8000", "http://127.0.0.1:8000")
    ws_max_frame_bytes: Positive = 64 * 1024
    ws_heartbeat_s: Positive = 20
    ws_outbox_frames: Positive = 1000  # frames queued for one slow client before it is closed (1013)
    # Net allocations between two collections of Python's first GC generation in a started
    # server (Python's default is 700), which also freezes what start-up left (app/gc_tuning.py);
    # 0 keeps Python's defaults. With thousands of connections open, Python's defaults spent
    # most of a connect storm's CPU in full collections (docs/performance.md, connect path).
    gc_gen0_threshold: NonNegative = 10_000
    # With the above: young-generation collections between two full ones (Python: 10; 0 keeps
    # Python's), and how often a calm process runs a full collection that is due (0: never; see
    # app/gc_tuning.py): a reconnect storm's full collections each walked every open connection.
    gc_gen2_threshold: NonNegative = 100
    gc_calm_collect_s: NonNegativeSeconds = 1.0
    # Connect admission (blueprints/ws.py): connects being set up at once per process, and how
    # many may wait for a slot; past that a connect is closed at once with 1013 and a retry hint
    # (base + random jitter), so a reconnect storm becomes a queue, not a pegged core.
    ws_admit_concurrency: Positive = 64
    ws_admit_queue: NonNegative = 1024
    ws_admit_retry_ms: Positive = 1000
    # The per-user room list cached in Redis for the connect (app/store/user_rooms.py): its TTL
    # bounds how long a lost invalidation (Redis down at that moment) can leave it stale.
    user_rooms_ttl_s: Positive = 600
    message_max_chars: Positive = 4000
    # Message lifecycle (app/lifecycle.py, app/reads.py, app/search.py).
    reactions_max_emoji: Positive = 20  # distinct emoji on one message
    mentions_max: Positive = 20  # @mentions of one message that are tracked (counted, highlighted)
    reply_excerpt_chars: Positive = 120  # the quote of the original a reply shows
    search_max_query_chars: Positive = 200
    search_candidates: Positive = 500  # PostgreSQL ranks at most this many newest matches per search
    idempotency_ttl_s: Positive = 24 * 3600
    # A room whose cache is fully flushed and that stays idle this long loses its Redis
    # keys (log tail, counters, member set); they are rebuilt from PostgreSQL on next use.
    room_cache_idle_ttl_s: Positive = 7 * 24 * 3600
    write_mode: Literal["cache", "direct"] = Field("cache", validation_alias="CHAT_WRITE_MODE")  # cache | direct

    flush_batch_size: Positive = 5000
    cache_tail: NonNegative = 200  # 0: nothing kept in Redis once flushed
    flush_backlog_threshold: NonNegative = 1000
    # The backlog trigger's rooms are gathered for this long (or until FLUSH_JOB_ROOMS of them)
    # and queued as one flush_rooms job: each job costs the worker Dramatiq's fetch and ack and
    # the server one executor call, whatever its number of rooms. 0: no wait (still one job
    # for the triggers of one event-loop turn).
    flush_coalesce_ms: NonNegative = 50
    flush_job_rooms: Positive = 32  # rooms per flush_rooms job (trigger and schedule)
    # Renewed every batch, so it only has to outlast one batch; short, so a room whose
    # flushing worker was killed is picked up again within seconds.
    flush_lease_s: Positive = 10
    # A worker silent this long is dead: Dramatiq requeues the jobs it had fetched.
    broker_heartbeat_timeout_s: Positive = 10
    retention_days: Positive = 30
    prune_batch_size: Positive = 5000
    flush_cron: str = "* * * * *"
    sweep_cron: str = "0 * * * *"
    prune_cron: str = "0 4 * * *"
    # Membership reconcile: every room's Redis member set compared with PostgreSQL and repaired.
    reconcile_cron: str = "*/5 * * * *"

    media_root: str = str(ROOT / "media")
    max_upload_bytes: Positive = 10 * 1024 * 1024
    max_image_pixels: Positive = 40_000_000
    thumbnail_px: Positive = 320
    image_ttl_days: Positive = 7
    file_ttl_days: Positive = 14
    # Signed media links (GET /files/{id}/url) work this long: enough for an <img> to load.
    media_url_ttl_s: Positive = 300
    allowed_mime: CSV = (
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

    # Observability (app/logs.py, app/metrics.py, blueprints/metrics.py; README "Monitoring").
    chat_log_format: Literal["text", "json"] = "text"  # json: one JSON object per log line
    # GET /metrics: empty = only loopback clients that did not come through a proxy may scrape;
    # set = a scrape must send `Authorization: Bearer <token>` (from anywhere).
    metrics_token: str = ""
    metrics_backlog_rooms: Positive = 1000  # pending rooms one scrape reads for the backlog gauges
    metrics_dead_letters_cache_s: Seconds = 10.0  # dead_letters is counted at most this often
    # prometheus-client's own variable: its multiprocess mode (several Sanic workers, the
    # Dramatiq worker) keeps the counters in files there. `make run` sets it to VAR_DIR/metrics
    # (emptied at start); a server with WORKERS>1 without it warns (each scrape: one worker's).
    prometheus_multiproc_dir: str = ""
    # The job broker (app/jobs.py): redis://... or amqp://... (RabbitMQ); empty = REDIS_URL.
    broker_url: str = ""

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if value and scheme not in ("redis", "rediss", "unix", "amqp", "amqps"):
            raise ValueError("must be a redis://, rediss://, unix://, amqp:// or amqps:// URL (or empty: REDIS_URL)")
        return value

    @property
    def production(self) -> bool:
        return self.chat_env == "production"

    @field_validator("ws_allowed_origins", "allowed_mime", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("allow_redis_without_persistence", "redis_cluster", mode="before")
    @classmethod
    def _empty_is_false(cls, value: Any) -> Any:
        return False if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _safe_in_production(self) -> "Settings":
        if self.production:
            if self.jwt_secret == DEV_JWT_SECRET:
                raise ValueError("JWT_SECRET is the development default; set a real secret in production")
            if len(self.jwt_secret.encode()) < 32:
                raise ValueError("JWT_SECRET must be at least 32 bytes in production")
        return self

    @model_validator(mode="after")
    def _broker_off_cluster(self) -> "Settings":
        # Dramatiq's Redis broker runs multi-key Lua over keys of many slots: it cannot run on a
        # cluster, so a clustered deployment must name its broker (no silent REDIS_URL default).
        if self.redis_cluster and not self.broker_url:
            raise ValueError("REDIS_CLUSTER=true needs BROKER_URL: Dramatiq's Redis broker is not cluster-safe; "
                             "set BROKER_URL to a plain (non-cluster) Redis, redis://host:port/0, "
                             "or to RabbitMQ, amqp://user:pass@host:5672/")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The constructor reads only its arguments; `load` chooses where values come from.
        return (init_settings,)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, env_file: Path | None = ROOT / ".env.local") -> "Settings":
        """Build settings from `env` (default os.environ) over the `.env.local` defaults."""
        source: dict[str, str] = {}
        if env_file is not None and env_file.exists():
            # python-dotenv, the parser pydantic-settings' own .env source uses; no ${VAR}
            # expansion (the file's values are taken as written, as they always were)
            source.update((k, v) for k, v in dotenv_values(env_file, interpolate=False).items() if v is not None)
        source.update(os.environ if env is None else env)
        return cls._build(_MappingEnvSource(cls, source)())

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (by field name), validated like a load."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"Settings has no field {', '.join(sorted(unknown))}")
        return type(self)._build({**self.model_dump(), **changes})

    @classmethod
    def _build(cls, values: dict[str, Any]) -> "Settings":
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> the environment variable that sets it."""
        return {name: env_name(name) for name in cls.model_fields}


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (os.environ, or a test's dict).

    `_load_env_vars` is the hook pydantic-settings' own DotEnvSettingsSource overrides the same
    way; tests/app/test_settings.py fails if it stops being called (a given mapping ignored)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Only the exact variable names: `port=1` must not set PORT (it may name a field).
        names = Settings.env_names().values()
        return {name: self._env[name] for name in names if name in self._env}


def _explain(exc: ValidationError) -> str:
    """One line per bad variable: `NAME='value': what is wrong`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a check across fields (production safety): its message names the variable
            lines.append(msg)
            continue
        name = str(loc[0])
        if name in Settings.model_fields:
            name = env_name(name)
        lines.append(f"{name}={err['input']!r}: {msg}")
    return "; ".join(lines)
