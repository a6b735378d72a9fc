"""The Dockerfile: pinned dependencies only, the graceful server as its command, and a usable image for
the other processes (migrate, usage writer, Celery) that compose.yaml and deploy/k8s/ run from it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from .files import DOCKERFILE, REPO

# `pip install` options that take no package argument.
_PIP_FLAGS = {"--no-cache-dir", "--no-deps", "--upgrade", "-U", "--quiet", "-q", "--require-hashes", "--no-compile"}


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, arguments = stripped.partition(" ")
            result.append((instruction.upper(), arguments.strip()))
    return result


def _requirement_lines(path: Path) -> list[tuple[Path, str]]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines += _requirement_lines(path.parent / line.split(maxsplit=1)[1])
        else:
            lines.append((path, line))
    return lines


def _unpinned_pip_installs(text: str) -> list[str]:
    """Every `pip install` argument that is neither `-r <pinned requirements file>` nor `name==version`."""
    problems = []
    copied = {args.split()[0] for instruction, args in _instructions(text) if instruction == "COPY"}
    for instruction, arguments in _instructions(text):
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", arguments):
            words = shlex.split(command)
            if "pip" not in words and not any(word.endswith("/pip") for word in words):
                continue
            if "install" not in words:
                continue
            rest = words[words.index("install") + 1 :]
            while rest:
                word = rest.pop(0)
                if word in ("-r", "--requirement"):
                    requirements = rest.pop(0)
                    if not requirements.startswith("requirements/") or requirements not in copied | {"."}:
                        problems.append(f"-r {requirements}: not a copied file under requirements/")
                        continue
                    for source, line in _requirement_lines(REPO / requirements):
                        if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?==[A-Za-z0-9_.+\-]+", line):
                            problems.append(f"{source.name}: {line}")
                elif word in _PIP_FLAGS:
                    continue
                elif not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?==[A-Za-z0-9_.+\-]+", word):
                    problems.append(word)
    return problems


def test_pip_installs_only_pinned_requirements() -> None:
    text = DOCKERFILE.read_text()
    assert "pip install" in text
    assert _unpinned_pip_installs(text) == []


@pytest.mark.parametrize(
    "line",
    [
        "RUN pip install requests",
        "RUN pip install -U pip && pip install uvicorn>=0.30",
        "RUN pip install -r requirements/unknown.txt",
        "RUN python -m pip install --no-cache-dir flask==3.0.0 gunicorn",
    ],
)
def test_an_unpinned_install_is_reported(line: str) -> None:
    assert _unpinned_pip_installs(f"FROM python:3.11-slim\nCOPY requirements/base.txt requirements/base.txt\n{line}\n")


def test_command_is_the_graceful_server() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    commands = [arguments for instruction, arguments in instructions if instruction == "CMD"]
    assert len(commands) == 1
    command = json.loads(commands[0])
    assert isinstance(command, list), "exec form: the shell execs the server, which gets SIGTERM itself"
    assert command[:2] == ["sh", "-c"]
    script = command[2]
    assert "exec python -m muxer_project.serve " in script
    assert "--workers $WEB_CONCURRENCY" in script
    assert dict(instructions)["STOPSIGNAL"] == "SIGTERM"


def test_the_multiprocess_metrics_directory_exists_for_every_process() -> None:
    """prometheus_client fails at the first metric when PROMETHEUS_MULTIPROC_DIR names a missing directory."""
    instructions = _instructions(DOCKERFILE.read_text())
    env = " ".join(arguments for instruction, arguments in instructions if instruction == "ENV")
    directory = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", env)
    assert directory
    runs = [arguments for instruction, arguments in instructions if instruction == "RUN"]
    (build,) = [run for run in runs if "manage.py" in run]
    # The build step runs without it...
    assert "env -u PROMETHEUS_MULTIPROC_DIR python manage.py collectstatic" in build
    # ...and the image ships the directory, owned by the user everything runs as.
    user = dict(instructions)["USER"]
    assert f'install -d -o {user} "$PROMETHEUS_MULTIPROC_DIR"' in build


def test_the_env_files_of_deploy_stay_out_of_the_image() -> None:
    patterns = (REPO / ".dockerignore").read_text().splitlines()
    assert ".env" in patterns
    assert "**/.env" in patterns
