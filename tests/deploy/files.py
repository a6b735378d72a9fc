"""Readers for the deployment files under deploy/, shared by the tests beside this module."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
NGINX_TEMPLATES = DEPLOY / "nginx" / "templates"
PROMETHEUS_COMPOSE = DEPLOY / "prometheus" / "prometheus.compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILE = REPO / "Dockerfile"

# Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; $$ is a $.
_INTERPOLATION = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(KeyError):
    pass


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file (comments and blank lines skipped), in order."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"not KEY=value: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution over a loaded document, raising MissingVariable for ${VAR:?...}."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, value)


def variables_used(text: str) -> dict[str, str | None]:
    """Every variable a compose file interpolates, with its operator (None for a plain ${VAR})."""
    found: dict[str, str | None] = {}
    for match in _INTERPOLATION.finditer(text):
        name = match.group("braced") or match.group("bare")
        if name:
            found[name] = match.group("op")
    return found


@cache
def compose_raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as compose sees it with deploy/.env.example as its .env."""
    result = interpolate(compose_raw(), env if env is not None else env_file(ENV_EXAMPLE))
    assert isinstance(result, dict)
    return result


@cache
def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s/ (the kustomization excepted), with its file."""
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path, document))
    return documents


def nginx_directives(text: str, name: str) -> list[list[str]]:
    """The arguments of every `name ...;` directive in an nginx config (comments dropped)."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [match.group(1).split() for match in re.finditer(rf"(?:^|[;{{}}\s]){name}\s+([^;{{}}]*);", code)]
