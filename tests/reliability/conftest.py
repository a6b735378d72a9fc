"""The fault suite's stack: real processes against the machine's PostgreSQL and Redis.

A gateway with two uvicorn workers, the usage writer, and the fake upstream,
all in their own processes; the test drives bounded load from the outside,
injects its fault, and checks the ledger. Each test records its figures in
``FIGURES``; they are printed after the run and written to
``tests/reliability/last-run.json`` (the README publishes a run's figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from accounts.models import Organization, User
from billing.models import UsageRecord
from billing.usage import usage_pending
from muxer_project.redis import sync_redis
from tests.conftest import BREAKER_OFF, ROOT, FakeUpstream, database_url, free_port, provider_env, stop, wait_for
from tests.factories import issue_key

FIGURES: dict[str, dict[str, Any]] = {}
RESULTS = Path(__file__).with_name("last-run.json")


def record(name: str, **figures: Any) -> None:
    FIGURES[name] = figures


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    RESULTS.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("reliability figures")
    for name, figures in sorted(FIGURES.items()):
        terminalreporter.write_line(f"{name}: {json.dumps(figures, sort_keys=True)}")


@dataclass
class Stack:
    url: str
    key: str
    organization: Organization
    usage_stream: str
    gateway: subprocess.Popen[bytes]
    writer: subprocess.Popen[bytes]
    log: Path

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes under the supervisor (not multiprocessing's resource tracker)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    command = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.gateway.pid and b"spawn_main" in command:
                    found.append(int(entry.name))
        return sorted(found)

    def rows(self, request_ids: list[str], *, timeout: float = 20.0) -> dict[str, list[UsageRecord]]:
        """Usage rows of these requests, once the writer has drained the stream (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while True:
            with override_settings(MUXER_USAGE_STREAM=self.usage_stream):
                pending = usage_pending()
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        found: dict[str, list[UsageRecord]] = {rid: [] for rid in request_ids}
        for row in UsageRecord.objects.filter(request_id__in=request_ids).order_by("request_id", "attempt"):
            found[row.request_id].append(row)
        return found


@pytest.fixture
def stack(
    transactional_db: None,
    fake_upstream: FakeUpstream,
    organization: Organization,
    owner: User,
    catalog: None,
    tmp_path: Path,
) -> Iterator[Stack]:
    if not settings.REDIS_URL or not settings.DATABASES["default"]["ENGINE"].endswith(".postgresql"):
        pytest.skip("the fault suite runs against the machine's PostgreSQL and Redis")
    stream = f"muxer:usage:test:reliability-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        **provider_env(fake_upstream.url),
        **BREAKER_OFF,
        "SECRET_KEY": settings.SECRET_KEY,
        "MUXER_USAGE_STREAM": stream,
        "MUXER_KEY_CACHE_SECONDS": "30",
        "MUXER_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS": "1.0",
        "MUXER_RETRY_BASE_DELAY_SECONDS": "0.01",
        "MUXER_RETRY_MAX_DELAY_SECONDS": "0.05",
        "MUXER_RETRY_BUDGET_SECONDS": "10",
        "LOG_LEVEL": "WARNING",
        "MUXER_SHUTDOWN_DRAIN_SECONDS": "1",
        "MUXER_SHUTDOWN_GRACE_SECONDS": "15",
    }
    key = issue_key(organization, created_by=owner).secret
    port = free_port()
    log = tmp_path / "gateway.log"
    # The production runner (muxer_project/serve.py): uvicorn's supervisor with two workers that drain on SIGTERM.
    command = [sys.executable, "-m", "muxer_project.serve", "--port", str(port), "--workers", "2",
               "--log-level", "warning"]  # fmt: skip
    gateway = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    writer_log = tmp_path / "writer.log"
    writer = subprocess.Popen(
        [sys.executable, "manage.py", "usage_writer"], cwd=ROOT, env=env, stdout=writer_log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", gateway, log, timeout=60)
        yield Stack(url=url, key=key, organization=organization, usage_stream=stream, gateway=gateway, writer=writer,
                    log=log)  # fmt: skip
    finally:
        stop(gateway)
        stop(writer)
        sync_redis().delete(stream)
