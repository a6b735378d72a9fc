"""Liveness does no I/O; readiness asks the database, Redis, the broker and the breakers, and says which failed."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError
from django.test import Client
from pytest_django.fixtures import DjangoAssertNumQueries
from pytest_django.fixtures import Settings as SettingsWrapper

from muxer_project import health
from providers.catalog import get_catalog_sync
from providers.models import Model
from providers.resilience import breaker
from tests.conftest import RedisServer

pytestmark = pytest.mark.django_db


def ready(client: Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    return response.status_code, response.json()


def test_liveness_answers_without_touching_the_database_or_the_network(
    client: Client, django_assert_num_queries: DjangoAssertNumQueries, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object) -> None:
        raise AssertionError("liveness opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with django_assert_num_queries(0):
        response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_on_the_embedded_default_checks_everything_and_passes(client: Client, catalog: None) -> None:
    status, body = ready(client)

    assert status == 200
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "redis", "broker", "providers"}
    assert all(check["status"] == "ok" for check in body["checks"].values())
    assert body["checks"]["providers"]["detail"].endswith("models' circuits closed")


@pytest.fixture
def strict(settings: SettingsWrapper) -> None:
    """Readiness that requires every check (by default none is required)."""
    settings.MUXER_READY_REQUIRES = ["database", "redis", "broker", "providers"]


def test_a_failing_database_is_reported_and_the_provider_check_waits_for_it(
    client: Client, catalog: None, monkeypatch: pytest.MonkeyPatch, strict: None
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(health.connection, "cursor", refused)

    status, body = ready(client)

    assert status == 503
    assert body["status"] == "unavailable"
    database = body["checks"]["database"]
    assert (database["status"], database["detail"]) == ("failing", "OperationalError")
    assert body["checks"]["providers"]["detail"] == "needs the database"


def test_every_circuit_open_makes_the_instance_unready(
    client: Client, catalog: None, settings: SettingsWrapper, strict: None
) -> None:
    settings.MUXER_BREAKER_FAILURE_THRESHOLD = 1
    Model.objects.exclude(name="fake-small").update(enabled=False)
    model = get_catalog_sync().get("fake-small")
    assert model is not None
    assert ready(client)[0] == 200

    async_to_sync(breaker.record)(model, ok=False)

    status, body = ready(client)
    assert status == 503
    providers = body["checks"]["providers"]
    assert (providers["status"], providers["detail"]) == ("failing", "every circuit is open")
    assert body["circuits"] == {"fake/fake-small": "open"}


# --- a real Redis of the test's own, stopped and frozen -------------------------------------------


@pytest.fixture
def private_redis(redis_server: RedisServer, settings: SettingsWrapper) -> Iterator[RedisServer]:
    """The test's own Redis (tests/conftest.py), also as the Celery broker, with short readiness timeouts."""
    settings.CELERY_BROKER_URL = redis_server.url
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.MUXER_READY_TIMEOUT_SECONDS = 0.5
    health._probe_client.cache_clear()
    yield redis_server
    health._probe_client.cache_clear()


@pytest.mark.parametrize("stop", ["terminated", "frozen"])
def test_a_stopped_redis_is_reported_within_the_timeout_and_recovery_is_seen(
    client: Client, catalog: None, private_redis: RedisServer, stop: str, strict: None
) -> None:
    status, body = ready(client)
    assert status == 200, body
    assert body["checks"]["redis"]["detail"] == "pong"
    assert body["checks"]["broker"]["detail"] == "pong"

    if stop == "terminated":
        private_redis.stop()
    else:
        private_redis.freeze()
    started = time.monotonic()
    status, body = ready(client)
    took = time.monotonic() - started

    assert status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["status"] == "failing"
    assert body["checks"]["broker"]["status"] == "failing"
    assert body["checks"]["redis"]["detail"] in ("ConnectionError", "TimeoutError")
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["providers"]["detail"] == "needs Redis"
    # Each store check gives up after MUXER_READY_TIMEOUT_SECONDS (0.5 s) rather than hanging the probe.
    assert took < 5

    if stop == "frozen":
        private_redis.thaw()
        status, body = ready(client)
        assert status == 200, body


def test_by_default_a_failing_shared_dependency_leaves_the_instance_ready_and_says_degraded(
    client: Client, catalog: None, private_redis: RedisServer
) -> None:
    private_redis.stop()

    status, body = ready(client)

    # Every instance shares this Redis: failing readiness would take them all out of rotation at once.
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "failing"
    assert body["checks"]["database"]["status"] == "ok"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_answer_an_instance_address_over_http_under_production_host_rules(
    client: Client, catalog: None, settings: SettingsWrapper, path: str
) -> None:
    settings.ALLOWED_HOSTS = ["gateway.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = []

    # A kubelet or Prometheus asks the pod by its address, over plain HTTP.
    probe = client.get(path, HTTP_HOST="10.1.2.3:8000")
    page = client.get("/console/login/", HTTP_HOST="10.1.2.3:8000")
    redirected = client.get("/console/login/", HTTP_HOST="gateway.example.com")

    assert probe.status_code == 200
    assert page.status_code == 400  # every other path still validates the host
    assert redirected.status_code == 301  # and is redirected to HTTPS
