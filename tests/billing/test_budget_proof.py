"""The proof that budgets hold: concurrent requests through two server processes on real Redis and PostgreSQL
never overspend, the ledger equals the counters, and a stream the client cuts off is still billed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from django.test import override_settings

from accounts.models import Organization, User
from billing.budgets import budget_usage
from billing.models import Budget, UsageRecord, UsageStatus
from billing.usage import usage_drain
from tests.conftest import FakeUpstream, gateway_processes
from tests.factories import issue_key

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

REQUESTS = 200
BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}


@dataclass
class Servers:
    urls: list[str]
    usage_stream: str


@pytest.fixture(scope="module")
def servers(
    django_db_setup: None, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Two gateway processes sharing the test database, Redis and one usage stream, as two instances would."""
    stream = f"muxer:usage:test:{uuid.uuid4().hex}"
    short_caches = {"MUXER_KEY_CACHE_SECONDS": "0.5", "MUXER_CATALOG_CACHE_SECONDS": "0.5",
                    "MUXER_BUDGET_CACHE_SECONDS": "0.2", "MUXER_USAGE_STREAM": stream}  # fmt: skip
    try:
        with gateway_processes(2, fake_upstream, tmp_path_factory, **short_caches) as urls:
            yield Servers(urls=urls, usage_stream=stream)
    finally:
        from muxer_project.redis import sync_redis

        sync_redis().delete(stream)


@pytest.fixture(autouse=True)
def _fresh_stream(servers: Servers) -> Iterator[None]:
    """Events a test leaves (because it failed before draining) name rows its flush removed: drop them."""
    yield
    from muxer_project.redis import sync_redis

    sync_redis().delete(servers.usage_stream)


def drain(servers: Servers) -> None:
    with override_settings(MUXER_USAGE_STREAM=servers.usage_stream):
        while usage_drain(block_ms=0):
            pass


def settled(budget: Budget, timeout: float = 10.0) -> tuple[Decimal, Decimal]:
    """The counter once no reservation is outstanding (settlement runs just after each response)."""
    deadline = time.monotonic() + timeout
    while True:
        usage = budget_usage(budget)
        if usage.reserved_usd == 0 or time.monotonic() > deadline:
            return usage.spent_usd, usage.reserved_usd
        time.sleep(0.05)


async def fire(urls: list[str], secret: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        headers = {"authorization": f"Bearer {secret}"}
        return await asyncio.gather(
            *(client.post(f"{urls[i % 2]}/v1/chat/completions", json=BODY, headers=headers) for i in range(REQUESTS))
        )


def test_concurrent_requests_through_two_processes_never_overspend(
    servers: Servers, organization: Organization, owner: User, catalog: None
) -> None:
    issued = issue_key(organization, created_by=owner)
    # Each answer costs about $0.00000013 and holds up to $0.00000049 while in flight: some fit, most do not.
    budget = Budget.objects.create(
        organization=organization,
        scope="api_key",
        api_key=issued.api_key,
        period="daily",
        limit_usd=Decimal("0.000005"),
    )
    budget = Budget.objects.select_related("organization").get(pk=budget.pk)

    replies = asyncio.run(fire(servers.urls, issued.secret))

    answered = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert answered, "the budget fits some requests"
    assert refused, "and not all of them"
    # Requests alternate between the processes and both enforce the one budget. Which process answers the
    # few that fit is a race, so only the refusals are required of both.
    assert {i % 2 for i, r in enumerate(replies) if r.status_code == 429} == {0, 1}
    for reply in refused:
        error = reply.json()["error"]
        assert (reply.status_code, error["type"], error["code"]) == (429, "insufficient_quota", "budget_exceeded")
        assert Decimal(reply.headers["x-muxer-budget-remaining"]) >= 0
    # Each request records its usage, then settles; once nothing is held, every record is on the stream.
    spent, reserved = settled(budget)
    drain(servers)
    rows = list(UsageRecord.objects.filter(api_key=issued.api_key))
    assert len(rows) == len(answered)
    recorded = sum((r.cost_usd for r in rows), Decimal(0))
    assert recorded <= budget.limit_usd
    assert (spent, reserved) == (recorded, Decimal(0)), "the ledger sum equals the counter"


def test_a_stream_cut_off_by_the_client_is_still_billed(
    servers: Servers, organization: Organization, owner: User, catalog: None, fake_upstream: FakeUpstream
) -> None:
    drain(servers)  # nothing left over from another test
    issued = issue_key(organization, created_by=owner)
    budget = Budget.objects.create(
        organization=organization, scope="organization", period="daily", limit_usd=Decimal(1)
    )
    budget = Budget.objects.select_related("organization").get(pk=budget.pk)
    body = {
        "model": "fake-small",
        "stream": True,
        "messages": [{"role": "user", "content": "[fake words=400 chunk_delay_ms=20] go"}],
    }
    delivered_words = 0
    with httpx.stream(
        "POST",
        f"{servers.urls[0]}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {issued.secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                delivered_words += len((chunk["choices"][0]["delta"].get("content") or "").split())
            if delivered_words >= 5:
                break

    deadline = time.monotonic() + 10
    rows: list[UsageRecord] = []
    while not rows and time.monotonic() < deadline:
        drain(servers)
        rows = list(UsageRecord.objects.filter(request_id=request_id))
        time.sleep(0.05)
    [row] = rows
    assert row.status == UsageStatus.CLIENT_DISCONNECTED
    assert row.output_tokens >= delivered_words >= 5
    assert row.cost_usd > 0
    assert settled(budget) == (row.cost_usd, Decimal(0))
