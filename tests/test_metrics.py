"""``/metrics``: who may scrape it, what it shows, bounded labels, and correct sums over several workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import Organization, User
from billing.models import Budget, UsageRecord
from muxer_project import metrics
from tests.conftest import BREAKER_OFF, ROOT, FakeUpstream, database_url, free_port, provider_env, stop, wait_for
from tests.factories import issue_key

TOKEN = "scrape-token-for-tests-0123456789"
# Labels that would make a series per key, user or request: never on our metrics.
UNBOUNDED = {"key", "key_id", "api_key", "prefix", "key_prefix", "user", "user_id", "request_id", "team_id"}


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


@pytest.fixture(autouse=True)
def _fresh_networks() -> Iterator[None]:
    metrics._allowed_networks.cache_clear()
    metrics._dependencies = (0.0, {})
    yield
    metrics._allowed_networks.cache_clear()
    metrics._dependencies = (0.0, {})


@pytest.mark.django_db
def test_a_scraper_on_loopback_gets_the_gateway_django_and_deployment_metrics(client: Client, catalog: None) -> None:
    client.get("/console/login/")  # probes (/healthz, /readyz) are answered before the middleware that counts

    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    names = {sample.name for sample in samples(text)}
    assert "django_http_requests_total_by_method_total" in names
    assert {"muxer_dependency_up", "muxer_circuit_state"} <= names
    up = {s.labels["dependency"]: s.value for s in samples(text) if s.name == "muxer_dependency_up"}
    assert up == {"database": 1.0, "redis": 1.0, "broker": 1.0}
    circuits = {
        (s.labels["provider"], s.labels["model"]): s.value for s in samples(text) if s.name == "muxer_circuit_state"
    }
    assert circuits[("fake", "fake-small")] == 0.0
    # HELP lines of our own metrics, registered at import even before any request.
    assert "# HELP muxer_requests_total" in text


@pytest.mark.django_db
def test_a_scraper_elsewhere_needs_the_token(client: Client, settings: SettingsWrapper) -> None:
    settings.MUXER_METRICS_TOKEN = TOKEN

    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.django_db
def test_without_a_token_only_the_allowed_networks_may_scrape(client: Client, settings: SettingsWrapper) -> None:
    settings.MUXER_METRICS_TOKEN = ""
    settings.MUXER_METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]

    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    # A token is no way in while none is configured.
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer ").status_code == 403


@pytest.mark.django_db
def test_budget_utilisation_is_reported_per_budget(client: Client, organization: Organization, owner: User) -> None:
    budget = Budget.objects.create(organization=organization, scope="organization", period="monthly", limit_usd=10)
    key = issue_key(organization, created_by=owner).api_key
    UsageRecord.objects.create(
        request_id="req_budget_metric",
        organization=organization,
        api_key=key,
        model="fake-small",
        provider="fake",
        cost_usd=Decimal("2.5"),
        status="ok",
        http_status=200,
        created_at=timezone.now(),
    )

    text = client.get("/metrics").content.decode()

    [ratio] = [s for s in samples(text) if s.name == "muxer_budget_utilisation_ratio"]
    assert ratio.labels == {"org": str(organization.pk), "budget": str(budget.pk), "scope": "organization",
                            "period": "monthly"}  # fmt: skip
    assert ratio.value == pytest.approx(0.25)


# --- a live server with two worker processes ------------------------------------------------------


@pytest.fixture
def two_workers(
    transactional_db: None, fake_upstream: FakeUpstream, tmp_path: Path, settings: SettingsWrapper
) -> Iterator[tuple[str, Path]]:
    """uvicorn with two workers sharing a PROMETHEUS_MULTIPROC_DIR, as a production host runs it."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = free_port()
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        **provider_env(fake_upstream.url),
        **BREAKER_OFF,
        "SECRET_KEY": settings.SECRET_KEY,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "MUXER_USAGE_STREAM": f"muxer:usage:test:metrics-{port}",
    }
    command = [sys.executable, "-m", "uvicorn", "muxer_project.asgi:application", "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", process, log, timeout=60)
        yield url, multiproc
    finally:
        stop(process)
        if settings.REDIS_URL:
            from muxer_project.redis import sync_redis

            sync_redis().delete(env["MUXER_USAGE_STREAM"])


def requests_counted(found: list[Sample], org: str) -> float:
    # A worker's raw file keeps labels as (name, value) pairs; dict() reads both shapes.
    return sum(
        s.value
        for s in found
        if s.name == "muxer_requests_total" and dict(s.labels)["org"] == org and dict(s.labels)["status"] == "200"
    )


def counted_by_each_worker(directory: Path, org: str) -> list[float]:
    """muxer_requests_total as each worker process wrote it (one file per process)."""
    found = []
    for path in sorted(directory.glob("counter_*.db")):
        families = MultiProcessCollector._read_metrics([str(path)])  # type: ignore[attr-defined]
        found.append(requests_counted([s for family in families.values() for s in family.samples], org))
    return found


def test_several_workers_report_one_sum_whichever_answers_the_scrape(
    two_workers: tuple[str, Path], organization: Organization, owner: User, catalog: None
) -> None:
    url, directory = two_workers
    key = issue_key(organization, created_by=owner).secret
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "Hello gateway"}]}
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(30):
            # A fresh connection each time, so the kernel spreads the requests over both workers.
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}", "Connection": "close"},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
        scrapes = []
        for _ in range(6):
            scraped = http.get("/metrics", headers={"Connection": "close"})
            assert scraped.status_code == 200
            scrapes.append(scraped.text)

    counts = [requests_counted(samples(text), str(organization.pk)) for text in scrapes]
    assert counts == [30.0] * len(scrapes)
    for text in scrapes:
        labels = {name for s in samples(text) if s.name.startswith("muxer_") for name in s.labels}
        assert not labels & UNBOUNDED
        assert key[:16] not in text
    # Both workers served some of the requests, and the scrape added up their separate counts.
    per_worker = counted_by_each_worker(directory, str(organization.pk))
    assert sum(per_worker) == 30
    assert len([count for count in per_worker if count]) == 2, per_worker
