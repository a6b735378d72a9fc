"""The multi-instance stack: two gateway instances behind nginx, one usage writer and one Celery worker.

Everything runs as its own process against the machine's PostgreSQL (the test
database) and Redis, as a deployment with two machines would: each instance is
``python -m muxer_project.serve --workers 1`` on a port of its own, nginx
balances between them, the usage writer moves the shared usage stream into the
ledger, and the worker takes the Celery tasks (budget alerts) from a queue of
this run's own. The stack is started once per module; each test makes its own
organization and keys, and an instance a test stopped is started again before
the next one. Each test records its figures with ``record``; they are printed
after the run ("scale figures").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from billing.models import UsageRecord
from billing.usage import usage_pending
from muxer_project.redis import sync_redis
from tests.conftest import (
    BREAKER_OFF,
    IN_CI,
    ROOT,
    CeleryWorker,
    FakeUpstream,
    celery_worker_process,
    database_url,
    free_port,
    provider_env,
    stop,
    wait_for,
)

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
FIGURES: dict[str, dict[str, Any]] = {}


def record(name: str, **figures: Any) -> None:
    FIGURES[name] = figures


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("scale figures")
    for name, figures in sorted(FIGURES.items()):
        terminalreporter.write_line(f"{name}: {json.dumps(figures, sort_keys=True, default=str)}")


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        pytest.fail("the multi-instance tests need nginx: `make nginx` (Debian's nginx-light)")
    return found


@dataclass
class Instance:
    """One gateway instance: ``python -m muxer_project.serve --workers 1`` on its own port."""

    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """As nginx names it in ``$upstream_addr``."""
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self) -> str:
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        response.raise_for_status()
        return response.text


@dataclass(frozen=True)
class NginxLine:
    request_id: str
    status: int
    upstreams: tuple[str, ...]
    upstream_statuses: tuple[str, ...]


_LINE = re.compile(r'^(\S+) (\d+) "([^"]*)" "([^"]*)" \S+$')


@dataclass
class Cluster:
    instances: dict[str, Instance]
    url: str  # nginx
    nginx_command: list[str]
    access_log: Path
    usage_stream: str
    worker: CeleryWorker
    env: dict[str, str]
    directory: Path
    nginx: subprocess.Popen[bytes] | None = None

    @property
    def a(self) -> Instance:
        return self.instances["A"]

    @property
    def b(self) -> Instance:
        return self.instances["B"]

    def start_instance(self, name: str, port: int) -> Instance:
        log = self.directory / f"gateway-{name}.log"
        command = [sys.executable, "-m", "muxer_project.serve", "--port", str(port), "--workers", "1",
                   "--log-level", "warning"]  # fmt: skip
        process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        instance = Instance(name=name, port=port, log=log, process=process)
        self.instances[name] = instance
        return instance

    def start_nginx(self) -> None:
        log = self.directory / "nginx.out"
        self.nginx = subprocess.Popen(self.nginx_command, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        wait_for(f"{self.url}/healthz", self.nginx, log, timeout=30)

    def ensure_running(self) -> None:
        """Start again any instance a test stopped, on its old port, so nginx finds it where it was."""
        # (nginx counts no failures, max_fails=0: it sends to the instance again as soon as it is back.)
        restarted = [self.start_instance(i.name, i.port) for i in list(self.instances.values()) if not i.alive()]
        for instance in restarted:
            wait_for(f"{instance.url}/healthz", instance.process, instance.log, timeout=60)
        for name, instance in self.instances.items():
            assert instance.alive(), f"instance {name} is not running:\n{instance.log.read_text(errors='replace')}"

    def wait_drained(self, timeout: float = 20.0) -> None:
        """Until the usage writer has written everything on the stream (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        with override_settings(MUXER_USAGE_STREAM=self.usage_stream):
            while usage_pending() and time.monotonic() < deadline:
                time.sleep(0.05)

    def rows(self, request_ids: list[str], *, timeout: float = 20.0) -> dict[str, list[UsageRecord]]:
        """Usage rows of these requests, once the writer has drained the stream."""
        self.wait_drained(timeout)
        found: dict[str, list[UsageRecord]] = {rid: [] for rid in request_ids}
        for row in UsageRecord.objects.filter(request_id__in=request_ids).order_by("request_id", "attempt"):
            found[row.request_id].append(row)
        return found

    def nginx_lines(self, request_ids: set[str], *, timeout: float = 5.0) -> dict[str, NginxLine]:
        """nginx's access-log lines of these requests (it writes a line just after the response is sent, so wait
        for them all, or the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            lines: dict[str, NginxLine] = {}
            for raw in self.access_log.read_text(errors="replace").splitlines():
                match = _LINE.match(raw)
                if match is None or match[1] not in request_ids:
                    continue
                upstreams = tuple(a.strip() for a in match[3].split(",") if a.strip() and a.strip() != "-")
                statuses = tuple(s.strip() for s in match[4].split(",") if s.strip() and s.strip() != "-")
                lines[match[1]] = NginxLine(match[1], int(match[2]), upstreams, statuses)
            if len(lines) == len(request_ids) or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


def metric_sum(exposition: str, name: str, **labels: str) -> float:
    """The sum of one metric's samples whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _render_nginx(directory: Path, port: int, port_a: int, port_b: int) -> Path:
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / temp).mkdir(exist_ok=True)
    text = TEMPLATE.read_text()
    # As root, nginx's workers would otherwise switch to "nobody", who cannot enter the test's directory.
    replacements = {"@USER@": "user root;" if os.geteuid() == 0 else "", "@DIR@": str(directory),
                    "@PORT@": str(port), "@PORT_A@": str(port_a), "@PORT_B@": str(port_b)}  # fmt: skip
    for token, value in replacements.items():
        text = text.replace(token, value)
    config = directory / "nginx.conf"
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def scale_cluster(
    django_db_setup: None, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    if not settings.REDIS_URL or not settings.DATABASES["default"]["ENGINE"].endswith(".postgresql"):
        reason = "the multi-instance tests run against the machine's PostgreSQL and Redis"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    nginx = nginx_binary()
    directory = tmp_path_factory.mktemp("scale")
    stream = f"muxer:usage:test:scale-{uuid.uuid4().hex}"
    queue = f"muxer-test-scale-{uuid.uuid4().hex}"
    mail_dir = directory / "mail"
    mail_dir.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},  # one process per instance
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        # Budget alerts are queued by the instances for the worker, on this run's queue only.
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(mail_dir),
        **provider_env(fake_upstream.url),
        **BREAKER_OFF,
        "SECRET_KEY": settings.SECRET_KEY,
        "MUXER_USAGE_STREAM": stream,
        # The production default, stated: a revoked key works for at most this long on an instance that saw it.
        "MUXER_KEY_CACHE_SECONDS": "2",
        # Each test flushes the database and seeds the catalog again: instances must not keep the old one long.
        "MUXER_CATALOG_CACHE_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
        "MUXER_SHUTDOWN_DRAIN_SECONDS": "0.5",
        "MUXER_SHUTDOWN_GRACE_SECONDS": "10",
    }
    port, port_a, port_b = free_port(), free_port(), free_port()
    config = _render_nginx(directory, port, port_a, port_b)
    cluster = Cluster(
        instances={}, url=f"http://127.0.0.1:{port}",
        nginx_command=[nginx, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(config),
                       "-g", "daemon off;"],
        access_log=directory / "access.log", usage_stream=stream,
        worker=CeleryWorker(queue=queue, log=directory / "worker.log", mail_dir=mail_dir), env=env,
        directory=directory,
    )  # fmt: skip
    writer_log = directory / "writer.log"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # Everything starts at once; the worker's start-up is waited for while the instances boot.
        cluster.start_instance("A", port_a)
        cluster.start_instance("B", port_b)
        processes.append(
            subprocess.Popen(
                [sys.executable, "manage.py", "usage_writer"], cwd=ROOT, env=env, stdout=writer_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        with celery_worker_process(queue, cluster.worker.log, env):
            for instance in cluster.instances.values():
                wait_for(f"{instance.url}/healthz", instance.process, instance.log, timeout=60)
            cluster.start_nginx()
            yield cluster
    finally:
        for instance in cluster.instances.values():
            stop(instance.process)
        if cluster.nginx is not None:
            stop(cluster.nginx)
        for process in processes:
            stop(process)
        sync_redis().delete(stream, f"{stream}:rejected")


@pytest.fixture
def cluster(scale_cluster: Cluster, transactional_db: None, catalog: None) -> Iterator[Cluster]:
    """The stack with both instances up, for one test; the usage it caused is in the ledger before the database
    is flushed after it (an event written later would name a deleted key)."""
    scale_cluster.ensure_running()
    yield scale_cluster
    with contextlib.suppress(Exception):
        scale_cluster.wait_drained()
