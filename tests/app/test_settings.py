"""Settings: defaults, the environment over `.env.local`, and bad values refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import ROOT, Settings, SettingsError, env_name


def load(env: dict[str, str], env_file: Path | None = None) -> Settings:
    return Settings.load(env=env, env_file=env_file)


def test_defaults_are_the_development_defaults() -> None:
    s = load({})
    assert s == Settings()
    assert (s.chat_env, s.port, s.flush_batch_size, s.write_mode) == ("development", 8000, 5000, "cache")
    assert s.media_root == str(ROOT / "media") and s.var_dir == str(ROOT / "var")
    assert s.ws_allowed_origins == ("http://localhost:8000", "http://127.0.0.1:8000")
    assert not s.production and not s.allow_redis_without_persistence


def test_the_environment_sets_fields_by_their_upper_case_name_and_nothing_else_does() -> None:
    s = load({"PORT": "9001", "CHAT_WRITE_MODE": "direct", "REDIS_SOCKET_TIMEOUT_S": "0.5",
              "ALLOW_REDIS_WITHOUT_PERSISTENCE": "yes", "WS_ALLOWED_ORIGINS": " https://a.example , https://b.example,",
              "CHAT_ENV": "production", "JWT_SECRET": "s" * 32})
    assert (s.port, s.write_mode, s.redis_socket_timeout_s) == (9001, "direct", 0.5)
    assert s.allow_redis_without_persistence and s.production
    assert s.ws_allowed_origins == ("https://a.example", "https://b.example")
    # Only the exact names count: a lower-case variable or the field name of an alias is ignored.
    s = load({"port": "1", "WRITE_MODE": "direct", "write_mode": "direct", "UNRELATED": "x"})
    assert (s.port, s.write_mode) == (8000, "cache")
    assert env_name("write_mode") == "CHAT_WRITE_MODE" and env_name("port") == "PORT"


@pytest.mark.parametrize("raw,expected", [("1", True), ("true", True), ("On", True), ("0", False), ("no", False),
                                          ("", False)])
def test_booleans_read_the_usual_words(raw: str, expected: bool) -> None:
    assert load({"ALLOW_REDIS_WITHOUT_PERSISTENCE": raw}).allow_redis_without_persistence is expected


def test_env_local_is_read_and_the_environment_wins_over_it(tmp_path: Path) -> None:
    f = tmp_path / ".env.local"
    f.write_text("# a comment\n\nexport PORT=\"9100\"\nHOST='0.0.0.0'\nWORKERS=3\nport=5\nNOT_A_SETTING=1\n"
                 "REDIS_PREFIX=${HOME}x\n")
    s = load({"WORKERS": "4"}, f)
    assert (s.port, s.host, s.workers) == (9100, "0.0.0.0", 4)
    assert s.redis_prefix == "${HOME}x"  # taken as written, no expansion
    assert load({}, tmp_path / "missing").port == 8000  # no file: the defaults


def test_the_real_env_local_holds_only_valid_settings() -> None:
    s = load({}, ROOT / ".env.local")
    assert s.chat_env == "development" and s.media_root == "./media"


def test_load_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9200")
    assert load({}).port == 8000
    assert Settings.load(env_file=None).port == 9200  # no mapping: os.environ
    assert Settings().port == 8000  # the constructor reads no environment at all


@pytest.mark.parametrize("name,raw,why", [
    ("FLUSH_BATCH_SIZE", "abc", "valid integer"),
    ("FLUSH_BATCH_SIZE", "-5", "greater than 0"),
    ("CACHE_TAIL", "-1", "greater than or equal to 0"),
    ("MAX_UPLOAD_BYTES", "0", "greater than 0"),
    ("REDIS_CONNECT_TIMEOUT_S", "soon", "valid number"),
    ("ALLOW_REDIS_WITHOUT_PERSISTENCE", "maybe", "valid boolean"),
    ("CHAT_ENV", "prod", "'development', 'test' or 'production'"),
    ("CHAT_WRITE_MODE", "sometimes", "'cache' or 'direct'"),
    ("EMBEDDED_SERVERS", "sometimes", "'auto', 'always' or 'never'"),
    ("JWT_ALGORITHM", "RS256", "HS256"),
])
def test_a_bad_value_is_one_error_naming_the_variable_and_the_value(name: str, raw: str, why: str) -> None:
    with pytest.raises(SettingsError) as err:
        load({name: raw})
    text = str(err.value)
    assert text.startswith(f"{name}={raw!r}: ") and why in text and "\n" not in text, text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no pydantic traceback chained


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as err:
        load({"PORT": "x", "WORKERS": "-1"})
    assert "PORT='x'" in str(err.value) and "WORKERS='-1'" in str(err.value)


def test_replace_makes_a_validated_variant_and_leaves_the_original() -> None:
    base = Settings()
    s = base.replace(cache_tail=0, flush_batch_size=7)
    assert (s.cache_tail, s.flush_batch_size, base.cache_tail) == (0, 7, 200)
    with pytest.raises(SettingsError, match="FLUSH_BATCH_SIZE=0"):
        base.replace(flush_batch_size=0)
    with pytest.raises(TypeError, match="no_such"):
        base.replace(no_such=1)
    with pytest.raises(Exception):  # frozen: a Settings object is shared, never changed in place
        base.port = 1  # type: ignore[misc]


def test_nothing_but_settings_reads_the_environment() -> None:
    """Every module receives a Settings; only the process tooling hands os.environ to children."""
    allowed = {"app/settings.py", "app/ops/launcher.py", "app/ops/procs.py"}
    readers = sorted(
        str(path.relative_to(ROOT)) for package in ("app", "blueprints", "tasks", "models")
        for path in (ROOT / package).rglob("*.py")
        if str(path.relative_to(ROOT)) not in allowed
        and any(word in path.read_text("utf-8") for word in ("os.environ", "os.getenv", "environ.get("))
    )
    assert readers == []
