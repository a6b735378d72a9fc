"""Settings come from the environment; production hardening is a switch that must pass --deploy."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def show(*names: str, env: dict[str, str]) -> list[str]:
    """The settings' reprs as a process started with ``env`` sees them (one process for all: each costs seconds)."""
    code = f"from django.conf import settings; print(*(repr(eval('settings.' + n)) for n in {names!r}), sep='\\n')"
    result = manage("shell", "--no-imports", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-len(names) :]


def test_check_deploy_passes_with_production_switch() -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={"MUXER_PRODUCTION": "true", "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "gw.example.com"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_fails_without_production_switch() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={"MUXER_ENV_FILE": "/nonexistent"})
    assert result.returncode != 0
    assert "security.W004" in result.stderr  # HSTS is off outside production


def test_production_refuses_the_development_secret_key() -> None:
    result = manage("check", env={"MUXER_PRODUCTION": "true", "ALLOWED_HOSTS": "gw.example.com"})
    assert result.returncode != 0
    assert "real SECRET_KEY" in result.stderr


def test_embedded_default_with_nothing_set() -> None:
    engine, cache, eager, layer = show(
        "DATABASES['default']['ENGINE']",
        "CACHES['default']['BACKEND']",
        "CELERY_TASK_ALWAYS_EAGER",
        "CHANNEL_LAYERS['default']['BACKEND']",
        env={"MUXER_ENV_FILE": "/nonexistent"},
    )
    assert "sqlite3" in engine
    assert "LocMemCache" in cache
    assert eager == "True"
    assert "InMemoryChannelLayer" in layer


def test_database_and_redis_urls_switch_to_the_real_services() -> None:
    env = {
        "MUXER_ENV_FILE": "/nonexistent",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/anything",
        "REDIS_URL": "redis://127.0.0.1:6379/2",
    }
    engine, cache, broker, eager, layer = show(
        "DATABASES['default']['ENGINE']",
        "CACHES['default']['BACKEND']",
        "CELERY_BROKER_URL",
        "CELERY_TASK_ALWAYS_EAGER",
        "CHANNEL_LAYERS['default']['BACKEND']",
        env=env,
    )
    assert "postgresql" in engine
    assert "RedisCache" in cache
    assert broker == "'redis://127.0.0.1:6379/2'"
    assert eager == "False"
    assert "RedisChannelLayer" in layer


def test_environment_beats_config_file_which_beats_defaults(tmp_path: Path) -> None:
    config = tmp_path / "muxer.env"
    config.write_text("MUXER_MAX_BODY_BYTES=1234\nMUXER_KEY_CACHE_SECONDS=7\n")
    env = {"MUXER_ENV_FILE": str(config)}
    assert show("MUXER_MAX_BODY_BYTES", env=env) == ["1234"]
    assert show("MUXER_MAX_BODY_BYTES", "MUXER_KEY_CACHE_SECONDS", env={**env, "MUXER_MAX_BODY_BYTES": "99"}) == [
        "99",
        "7.0",
    ]
    assert show("MUXER_KEY_CACHE_SECONDS", env={"MUXER_ENV_FILE": "/nonexistent"}) == ["2.0"]
