"""Shared fixtures: the cast (owner, member, outsider), the catalog, and live servers.

Services: tests marked ``redis`` or ``postgres`` need the real thing. Locally
they skip when it is not configured; under CI (``CI`` set) they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
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
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings

from accounts.auth import forget_cached_keys
from accounts.bruteforce import forget_login_failures
from accounts.models import Organization, Role, User
from billing.budgets import forget_budget_state
from muxer_project import redis as muxer_redis
from muxer_project.redis import redis_state, sync_redis
from providers.catalog import forget_catalog
from providers.credentials import forget_organization_keys
from providers.resilience import breaker, latency
from providers.services import catalog_sync_defaults
from routing.ratelimit import forget_rate_limits
from routing.response_cache import forget_cached_answers

from .factories import MembershipFactory, OrganizationFactory, UserFactory, issue_key

# No issued secret may reach a log or an audit row: checked over the whole session (tests/hygiene.py).
pytest_plugins = ["tests.hygiene"]

ROOT = Path(__file__).resolve().parent.parent
# Factories hash a password per user; the real hasher is deliberately slow.
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests inject provider failures on purpose; only the breaker's own tests should trip it.
BREAKER_OFF = {"MUXER_BREAKER_FAILURE_THRESHOLD": "1000000", "MUXER_BREAKER_MIN_REQUESTS": "1000000"}
settings.MUXER_BREAKER_FAILURE_THRESHOLD = int(BREAKER_OFF["MUXER_BREAKER_FAILURE_THRESHOLD"])
settings.MUXER_BREAKER_MIN_REQUESTS = int(BREAKER_OFF["MUXER_BREAKER_MIN_REQUESTS"])
IN_CI = bool(os.environ.get("CI"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing: dict[str, str] = {}
    if not settings.REDIS_URL:
        missing["redis"] = "REDIS_URL is not set"
    if not settings.DATABASES["default"]["ENGINE"].endswith(".postgresql"):
        missing["postgres"] = "DATABASE_URL does not point at PostgreSQL"
    for item in items:
        for marker, reason in missing.items():
            if marker in item.keywords:
                if IN_CI:
                    item.add_marker(pytest.mark.usefixtures("_fail_missing_service"))
                else:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _fail_missing_service(request: pytest.FixtureRequest) -> None:
    pytest.fail("a required service (PostgreSQL or Redis) is not configured under CI")


def _forget_process_state() -> None:
    forget_cached_keys()
    forget_catalog()
    forget_organization_keys()
    breaker.forget()
    latency.forget()
    forget_budget_state()
    forget_rate_limits()
    forget_login_failures()
    # Organization ids repeat across test runs, and a kept answer (in Redis) would outlive its run.
    forget_cached_answers()
    redis_state.forget()
    if settings.REDIS_URL:
        client = sync_redis()
        stale = [*client.scan_iter(match="muxer:cb*", count=1000), *client.scan_iter(match="muxer:rl:*", count=1000)]
        if stale:
            client.delete(*stale)


@pytest.fixture(autouse=True)
def _fresh_process_caches() -> Iterator[None]:
    _forget_process_state()
    yield
    _forget_process_state()


@pytest.fixture
def catalog(db: None) -> None:
    """The built-in catalog. Transactional tests flush the seeded rows, so restore them."""
    catalog_sync_defaults()


# --- the cast ---------------------------------------------------------------


@dataclass
class Tenant:
    organization: Organization
    owner: User
    member: User


@pytest.fixture
def tenant(db: None) -> Tenant:
    organization = OrganizationFactory.create()
    owner = MembershipFactory.create(organization=organization, role=Role.OWNER).user
    member = MembershipFactory.create(organization=organization, role=Role.MEMBER).user
    return Tenant(organization=organization, owner=owner, member=member)


@pytest.fixture
def organization(tenant: Tenant) -> Organization:
    return tenant.organization


@pytest.fixture
def owner(tenant: Tenant) -> User:
    return tenant.owner


@pytest.fixture
def member(tenant: Tenant) -> User:
    return tenant.member


@pytest.fixture
def outsider(db: None) -> User:
    """A user who owns another organization and has no membership in ours."""
    other = OrganizationFactory.create()
    return MembershipFactory.create(organization=other, role=Role.OWNER, user=UserFactory.create()).user


@pytest.fixture
def api_key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner).secret


# --- servers ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class RedisServer:
    """A redis-server of the test's own, without persistence: a test can freeze it (SIGSTOP), thaw it,
    stop it, and start it again empty, as a Redis restarted without AOF would be."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if probe.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        probe.close()

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            stop(self.process)
        self.process = None

    def restart(self) -> None:
        """Stopped and started again on the same port: its data is gone."""
        self.stop()
        self.start()


@pytest.fixture
def redis_server(settings: Any, tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis as the gateway's Redis (``REDIS_URL``), retried every 0.25 s, for tests that break it.
    The shared clients and Redis's state in this process are put back afterwards."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    saved_url, saved_client = settings.REDIS_URL, muxer_redis._sync_client
    muxer_redis._sync_client = None
    settings.REDIS_URL = server.url
    settings.MUXER_REDIS_SOCKET_TIMEOUT_SECONDS = 1.0
    settings.MUXER_REDIS_CONNECT_TIMEOUT_SECONDS = 1.0
    settings.MUXER_REDIS_POOL_TIMEOUT_SECONDS = 1.0
    settings.MUXER_REDIS_RETRY_SECONDS = 0.25
    try:
        yield server
    finally:
        server.stop()
        redis_state.forget()
        for key in [key for key in muxer_redis._blocking_clients if key[0] == server.url]:
            muxer_redis._blocking_clients.pop(key).close()
        if muxer_redis._sync_client is not None:
            muxer_redis._sync_client.close()
        # Put back now, not when the settings fixture ends: other fixtures' teardowns use Redis before that.
        settings.REDIS_URL = saved_url
        muxer_redis._sync_client = saved_client


@dataclass
class FakeUpstream:
    url: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_fake/stats").json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_fake/reset")


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    port = free_port()
    log = tmp_path_factory.mktemp("fake-upstream") / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "providers.fake_upstream", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", process, log)
        yield FakeUpstream(url=url)
    finally:
        stop(process)


# Where each provider's dialect lives on the fake upstream, and a stand-in credential.
FAKE_PROVIDER_PATHS = {
    "fake": ("/v1", None),
    "openai": ("/v1", "OPENAI_API_KEY"),
    "anthropic": ("/anthropic/v1", "ANTHROPIC_API_KEY"),
    "gemini": ("/gemini/v1beta", "GEMINI_API_KEY"),
    "mistral": ("/mistral/v1", "MISTRAL_API_KEY"),
    "groq": ("/groq/openai/v1", "GROQ_API_KEY"),
    "together": ("/together/v1", "TOGETHER_API_KEY"),
    "cohere": ("/cohere/v2", "COHERE_API_KEY"),
}


def provider_env(fake_url: str) -> dict[str, str]:
    """Environment that points every provider at the fake upstream, each with a credential."""
    env: dict[str, str] = {}
    for slug, (path, key_env) in FAKE_PROVIDER_PATHS.items():
        env[f"MUXER_{slug.upper()}_BASE_URL"] = f"{fake_url}{path}"
        if key_env:
            env[key_env] = f"test-{slug}-key"
    return env


@pytest.fixture
def upstream(fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """The fake upstream, reset, with every provider in the in-process catalog pointed at it."""
    fake_upstream.reset()
    for name, value in provider_env(fake_upstream.url).items():
        monkeypatch.setenv(name, value)
    forget_catalog()
    return fake_upstream


def database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith(".sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@dataclass
class Gateway:
    url: str
    usage_stream: str
    log: Path


@pytest.fixture(scope="session", params=["uvicorn", "daphne"])
def gateway(
    request: pytest.FixtureRequest,
    django_db_setup: None,
    fake_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """The real ASGI application in its own process, on the test database."""
    port = free_port()
    log = tmp_path_factory.mktemp(f"gateway-{request.param}") / "server.log"
    stream = f"muxer:usage:test:{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        **provider_env(fake_upstream.url),
        **BREAKER_OFF,
        "MUXER_KEY_CACHE_SECONDS": "0.5",
        "MUXER_CATALOG_CACHE_SECONDS": "0.5",
        "MUXER_USAGE_STREAM": stream,
        "SECRET_KEY": settings.SECRET_KEY,
    }
    if request.param == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", "muxer_project.asgi:application", "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
    else:
        # The gateway writes its own JSON access log; daphne's plain-text one would be a second, unstructured copy.
        command = [sys.executable, "-m", "daphne", "-p", str(port), "--access-log", os.devnull,
                   "muxer_project.asgi:application"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", process, log)
        yield Gateway(url=url, usage_stream=stream, log=log)
    finally:
        stop(process)
        if settings.REDIS_URL:
            from muxer_project.redis import sync_redis

            sync_redis().delete(stream)


@contextlib.contextmanager
def gateway_processes(
    count: int, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, **env_overrides: str
) -> Iterator[list[str]]:
    """``count`` uvicorn processes of the gateway sharing the test database and Redis, as separate instances
    would; yields their base URLs. ``env_overrides`` adds settings (e.g. shorter caches)."""
    # Their own usage stream unless the caller names one: nothing is left on the shared one for another test.
    stream = env_overrides.get("MUXER_USAGE_STREAM") or f"muxer:usage:test:{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        **provider_env(fake_upstream.url),
        **BREAKER_OFF,
        "SECRET_KEY": settings.SECRET_KEY,
        "MUXER_USAGE_STREAM": stream,
        **env_overrides,
    }
    processes, urls = [], []
    try:
        for index in range(count):
            port = free_port()
            log = tmp_path_factory.mktemp(f"instance-{index}") / "server.log"
            command = [sys.executable, "-m", "uvicorn", "muxer_project.asgi:application", "--port", str(port),
                       "--log-level", "warning"]  # fmt: skip
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
            wait_for(f"{urls[-1]}/healthz", process, log)
        yield urls
    finally:
        for process in processes:
            stop(process)
        if settings.REDIS_URL:
            sync_redis().delete(stream)


# --- Celery: eager in the test's process, or a real worker on the broker --------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "celery_worker: starts a real Celery worker on the Redis broker (needs Redis and PostgreSQL)"
    )


@pytest.fixture(autouse=True)
def _celery_eager(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tasks run inside the test unless it starts a real worker, so none is left queued on a shared broker."""
    if "celery_worker" in request.fixturenames:
        yield
        return
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        yield


@dataclass
class CeleryWorker:
    queue: str
    log: Path
    mail_dir: Path

    def task_succeeded(self, task_id: str) -> bool:
        return f"[{task_id}] succeeded" in self.log.read_text(errors="replace")

    def wait_for_task(self, task_id: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.task_succeeded(task_id):
                return
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} did not succeed in {timeout}s:\n{self.log.read_text(errors='replace')}")


@contextlib.contextmanager
def celery_worker_process(queue: str, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A muxer_project worker`` consuming only ``queue``, with ``env``, logging to ``log``; yields once it
    is ready, and stops it and deletes the queue afterwards."""
    command = [sys.executable, "-m", "celery", "-A", "muxer_project", "worker", "-Q", queue, "-n", f"{queue}@%h",
               "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while " ready." not in log.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited early ({process.returncode}):\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start in 30s:\n{log.read_text()}")
            time.sleep(0.1)
        yield process
    finally:
        stop(process)
        broker = redis.from_url(settings.CELERY_BROKER_URL)
        broker.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        broker.close()


@pytest.fixture
def celery_worker(transactional_db: None, tmp_path: Path) -> Iterator[CeleryWorker]:
    """``celery -A muxer_project worker`` in its own process, on the test database and the Redis broker.

    It consumes a queue of its own, which this test's tasks are sent to, so that
    parallel runs sharing a Redis never take each other's tasks. Mail goes to
    files in ``mail_dir``. Mark the test ``redis`` and ``postgres`` too.
    """
    if not settings.REDIS_URL or not settings.DATABASES["default"]["ENGINE"].endswith(".postgresql"):
        reason = "a real Celery worker needs REDIS_URL and a PostgreSQL DATABASE_URL"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    queue = f"muxer-test-{uuid.uuid4().hex}"
    log = tmp_path / "worker.log"
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(mail_dir),
        "SECRET_KEY": settings.SECRET_KEY,
    }
    with (
        celery_worker_process(queue, log, env),
        override_settings(CELERY_TASK_ALWAYS_EAGER=False, CELERY_TASK_DEFAULT_QUEUE=queue),
    ):
        yield CeleryWorker(queue=queue, log=log, mail_dir=mail_dir)
