"""The fault suite's stack: real processes against the machine's PostgreSQL and Redis.

A gateway with two uvicorn workers, the usage writer, a Celery worker and the
fake upstream, all in their own processes; the test drives bounded load from the outside,
injects its fault, and checks the ledger. Each test records its figures in
``FIGURES``; they are printed after the run and written to
``tests/reliability/last-run.json`` (the README publishes a run's figures).
"""

from __future__ import annotations

import contextlib
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
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Organization, User
from billing.models import UsageRecord
from billing.usage import usage_pending
from tests.conftest import (
    BREAKER_OFF,
    ROOT,
    FakeUpstream,
    RedisServer,
    database_url,
    free_port,
    provider_env,
    stop,
    wait_for,
)
from tests.factories import issue_key

from .tcp_proxy import TcpProxy

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
    queue: str  # the Celery worker's queue
    redis_url: str
    gateway: subprocess.Popen[bytes]
    writer: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    log: Path

    def metric(self, name: str, **labels: str) -> float:
        """A metric summed over every process of the stack (they share one PROMETHEUS_MULTIPROC_DIR)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

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


@contextlib.contextmanager
def start_stack(
    fake_upstream: FakeUpstream,
    organization: Organization,
    owner: User,
    tmp_path: Path,
    *,
    redis_url: str,
    db_url: str,
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """The gateway (the serve runner, two workers), the usage writer and a Celery worker, on these stores."""
    stream = f"muxer:usage:test:reliability-{uuid.uuid4().hex}"
    queue = f"reliability-{uuid.uuid4().hex[:12]}"
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    environment = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        **provider_env(fake_upstream.url),
        **BREAKER_OFF,
        "SECRET_KEY": settings.SECRET_KEY,
        "MUXER_USAGE_STREAM": stream,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "MUXER_KEY_CACHE_SECONDS": "30",
        "MUXER_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS": "1.0",
        "MUXER_RETRY_BASE_DELAY_SECONDS": "0.01",
        "MUXER_RETRY_MAX_DELAY_SECONDS": "0.05",
        "MUXER_RETRY_BUDGET_SECONDS": "10",
        "LOG_LEVEL": "WARNING",
        "MUXER_SHUTDOWN_DRAIN_SECONDS": "1",
        "MUXER_SHUTDOWN_GRACE_SECONDS": "15",
        **(env or {}),
    }
    key = issue_key(organization, created_by=owner).secret
    port = free_port()
    log = tmp_path / "gateway.log"
    # The production runner (muxer_project/serve.py): uvicorn's supervisor with two workers that drain on SIGTERM.
    command = [sys.executable, "-m", "muxer_project.serve", "--port", str(port), "--workers", "2",
               "--log-level", "warning"]  # fmt: skip
    gateway = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    writer = subprocess.Popen(
        [sys.executable, "manage.py", "usage_writer"], cwd=ROOT, env=environment,
        stdout=(tmp_path / "writer.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "muxer_project", "worker", "--pool", "solo", "--queues", queue,
         "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
        cwd=ROOT, env=environment, stdout=(tmp_path / "celery.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", gateway, log, timeout=60)
        yield Stack(url=url, key=key, organization=organization, usage_stream=stream, queue=queue,
                    redis_url=redis_url, gateway=gateway, writer=writer, worker=worker, log=log)  # fmt: skip
    finally:
        stop(gateway)
        stop(writer)
        stop(worker)
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(redis_url, socket_timeout=2)
            client.delete(stream, f"{stream}:rejected", queue)
            client.close()


def _stores_or_skip() -> None:
    if not settings.REDIS_URL or not settings.DATABASES["default"]["ENGINE"].endswith(".postgresql"):
        pytest.skip("the fault suite runs against the machine's PostgreSQL and Redis")


@pytest.fixture
def stack(
    transactional_db: None,
    fake_upstream: FakeUpstream,
    organization: Organization,
    owner: User,
    catalog: None,
    tmp_path: Path,
) -> Iterator[Stack]:
    """The stack on the machine's PostgreSQL and Redis."""
    _stores_or_skip()
    with start_stack(
        fake_upstream, organization, owner, tmp_path, redis_url=settings.REDIS_URL, db_url=database_url()
    ) as running:
        yield running


@pytest.fixture
def private_redis_stack(
    transactional_db: None,
    fake_upstream: FakeUpstream,
    organization: Organization,
    owner: User,
    catalog: None,
    tmp_path: Path,
    redis_server: RedisServer,
) -> Iterator[tuple[Stack, RedisServer]]:
    """The stack on the machine's PostgreSQL and a Redis of the test's own, which it may freeze or restart."""
    _stores_or_skip()
    timeouts = {
        "MUXER_REDIS_SOCKET_TIMEOUT_SECONDS": "1.0",
        "MUXER_REDIS_CONNECT_TIMEOUT_SECONDS": "1.0",
        "MUXER_REDIS_RETRY_SECONDS": "0.25",
        "MUXER_BROKER_SOCKET_TIMEOUT_SECONDS": "2.0",
    }
    with start_stack(
        fake_upstream, organization, owner, tmp_path, redis_url=redis_server.url, db_url=database_url(), env=timeouts
    ) as running:
        yield running, redis_server


@pytest.fixture
def proxied_db_stack(
    transactional_db: None,
    fake_upstream: FakeUpstream,
    organization: Organization,
    owner: User,
    catalog: None,
    tmp_path: Path,
) -> Iterator[tuple[Stack, TcpProxy]]:
    """The stack on the machine's Redis, reaching PostgreSQL through a proxy the test can make refuse."""
    _stores_or_skip()
    db = connection.settings_dict
    proxy = TcpProxy(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
    proxy.start()
    url = urlsplit(database_url())
    through = url._replace(netloc=f"{url.username}{':' + url.password if url.password else ''}@127.0.0.1:{proxy.port}")
    # The writer retries a failed batch quickly, so the test sees the queue flushed soon after the database is back.
    env = {"DATABASE_CONNECT_TIMEOUT_SECONDS": "1"}
    try:
        with start_stack(
            fake_upstream, organization, owner, tmp_path, redis_url=settings.REDIS_URL, db_url=through.geturl(), env=env
        ) as running:
            yield running, proxy
    finally:
        proxy.close()
