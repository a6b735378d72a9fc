"""deploy/.env.example: every variable documented, real, and safe until replaced."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from .files import COMPOSE, ENV_EXAMPLE, REPO, compose, env_file, variables_used

SECRETS = {
    "SECRET_KEY",
    "MUXER_API_KEY_SECRET",
    "MUXER_FERNET_KEYS",
    "POSTGRES_PASSWORD",
    "MUXER_METRICS_TOKEN",
    "GRAFANA_ADMIN_PASSWORD",
}
# Read by compose.yaml itself rather than by the gateway.
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "MUXER_SERVER_NAMES", "MUXER_HTTP_PORT", "MUXER_IMAGE"}


def _readers() -> str:
    """The source that reads the gateway's environment: settings, the server runner, the catalog's key names."""
    paths = ["muxer_project/settings.py", "muxer_project/serve.py", "providers/catalog_seed.py"]
    return "\n".join((REPO / path).read_text() for path in paths)


def test_every_variable_has_a_comment_above_it() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            name = line.split("=", 1)[0]
            previous = lines[number - 1]
            # A group of provider keys shares one comment.
            if name.endswith("_API_KEY") and lines[number - 1].endswith("_API_KEY="):
                continue
            assert previous.startswith("# "), f"{name} has no comment"
            assert len(previous) > 10, f"{name} has no comment"


def test_every_variable_is_one_the_stack_reads() -> None:
    readers = _readers()
    used_by_compose = variables_used(COMPOSE.read_text())
    for name in env_file(ENV_EXAMPLE):
        if name in COMPOSE_ONLY:
            assert name in used_by_compose, f"{name} is not used by compose.yaml"
        else:
            assert re.search(rf"[\"']{name}[\"']", readers), f"nothing reads {name}"


def test_every_variable_compose_interpolates_is_in_the_example() -> None:
    example = env_file(ENV_EXAMPLE)
    assert set(variables_used(COMPOSE.read_text())) <= set(example)


def test_secrets_are_placeholders() -> None:
    example = env_file(ENV_EXAMPLE)
    for name in SECRETS:
        assert example[name] == "change-me", name
    for name, value in example.items():
        if name.endswith("_API_KEY"):
            assert value == "", name
    assert ":change-me@" in example["DATABASE_URL"]


def _run_check(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MUXER_", "DATABASE_", "REDIS_"))}
    env.update(environment)
    env.update(
        {
            # Outside compose: no postgres host, nor a .env of the repo.
            "MUXER_ENV_FILE": "/nonexistent",
            "DATABASE_URL": "sqlite:////nonexistent/never-opened.sqlite3",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _gateway_environment(example: dict[str, str]) -> dict[str, str]:
    """What a gateway container's environment is: the env file, then compose's own `environment`."""
    gateway = compose(example)["services"]["gateway"]
    return {**example, **{key: str(value) for key, value in gateway["environment"].items()}}


def test_the_untouched_example_does_not_start() -> None:
    result = _run_check(_gateway_environment(env_file(ENV_EXAMPLE)))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_the_filled_in_example_passes_the_deploy_check(tmp_path: Path) -> None:
    example = env_file(ENV_EXAMPLE)
    for name in SECRETS:
        example[name] = secrets.token_urlsafe(64)
    example["MUXER_FERNET_KEYS"] = Fernet.generate_key().decode()
    environment = _gateway_environment(example)
    result = _run_check(environment, "--deploy")
    assert result.returncode == 0, result.stderr
    # The one warning is the choice compose.yaml documents: the TLS proxy in front redirects to https.
    warnings = set(re.findall(r"\(security\.(W\d+)\)", result.stdout + result.stderr))
    assert warnings == {"W008"}, result.stdout + result.stderr
    assert environment["SECURE_SSL_REDIRECT"] == "false"
