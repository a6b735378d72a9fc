"""Rate limits per key, team and organization: headers, 429s with Retry-After, Redis outages, two processes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from django.conf import settings
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Organization, Team, User
from routing import ratelimit
from tests.billing.test_budget_proof import Servers, servers  # noqa: F401 - the two-process fixture
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.routing.harness import chat, in_thread, post, upstream_stats, usage_rows

pytestmark = pytest.mark.django_db(transaction=True)


def limited_key(organization: Organization, owner: User, **limits: Any) -> str:
    issued = issue_key(organization, created_by=owner)
    APIKey.objects.filter(pk=issued.api_key.pk).update(**limits)
    return issued.secret


async def test_every_answer_says_how_much_of_the_limit_is_left(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=3, tpm_limit=10_000)

    replies = [await post(chat(max_tokens=16), key=key) for _ in range(3)]

    assert [r.status for r in replies] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in replies] == ["2", "1", "0"]
    assert {r.headers["x-ratelimit-limit-requests"] for r in replies} == {"3"}
    assert replies[0].headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(replies[0].headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert replies[-1].headers["x-ratelimit-reset-requests"].endswith("s")


async def test_a_spent_limit_gets_a_429_with_retry_after_and_nothing_is_called(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = await in_thread(limited_key, organization, owner, rpm_limit=1)
    await post(chat(max_tokens=16), key=key)
    upstream.reset()

    refused = await post(chat(max_tokens=16), key=key)

    assert refused.status == 429
    assert (refused.error["type"], refused.error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert (await upstream_stats(upstream))["requests"] == 0
    assert len(await usage_rows()) == 1


async def test_a_request_larger_than_the_token_limit_says_so(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = await in_thread(limited_key, organization, owner, tpm_limit=100)

    refused = await post(chat(max_tokens=500), key=key)

    assert (refused.status, refused.error["type"]) == (429, "tokens")
    assert "more than the key limit of 100 tokens per minute" in refused.error["message"]


async def test_team_and_organization_limits_count_every_key_in_them(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    def setup() -> tuple[str, str, str]:
        team = Team.objects.create(organization=organization, name="t", rpm_limit=1)
        first = issue_key(organization, created_by=owner, team=team).secret
        second = issue_key(organization, created_by=owner, team=team).secret
        Organization.objects.filter(pk=organization.pk).update(rpm_limit=2)
        third = issue_key(organization, created_by=owner).secret
        return first, second, third

    first, second, third = await in_thread(setup)

    assert (await post(chat(max_tokens=16), key=first)).status == 200
    team_refusal = await post(chat(max_tokens=16), key=second)
    assert "for the team" in team_refusal.error["message"]
    assert (await post(chat(max_tokens=16), key=third)).status == 200
    org_refusal = await post(chat(max_tokens=16), key=third)
    assert "for the org" in org_refusal.error["message"]


async def test_without_limits_there_are_no_rate_headers(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(max_tokens=16), key=api_key)

    assert not [name for name in reply.headers if name.startswith("x-ratelimit-")]


@pytest.mark.parametrize(("fail_open", "status"), [(True, 200), (False, 503)])
async def test_a_store_outage_follows_the_setting_and_is_counted(
    organization: Organization,
    owner: User,
    catalog: None,
    upstream: FakeUpstream,
    settings: SettingsWrapper,
    monkeypatch: pytest.MonkeyPatch,
    fail_open: bool,
    status: int,
) -> None:
    settings.MUXER_RATELIMIT_FAIL_OPEN = fail_open
    key = await in_thread(limited_key, organization, owner, rpm_limit=5)

    async def broken(self: object, meters: object) -> None:
        raise ConnectionError("store down")

    monkeypatch.setattr(ratelimit.MemoryMeters, "check", broken)
    monkeypatch.setattr(ratelimit.RedisMeters, "check", broken)
    before = store_errors()

    reply = await post(chat(max_tokens=16), key=key)

    assert reply.status == status
    assert store_errors() == before + 1
    if status == 503:
        assert reply.error["code"] == "rate_limit_unavailable"


@pytest.mark.redis
@pytest.mark.postgres
def test_three_times_the_limit_across_two_processes_admits_at_most_the_limit(
    servers: Servers,  # noqa: F811
    organization: Organization,
    owner: User,
    catalog: None,
) -> None:
    limit = 20
    key = limited_key(organization, owner, rpm_limit=limit)
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            headers = {"authorization": f"Bearer {key}"}
            return await asyncio.gather(
                *(
                    client.post(f"{servers.urls[i % 2]}/v1/chat/completions", json=body, headers=headers)
                    for i in range(3 * limit)
                )
            )

    replies = asyncio.run(fire())

    admitted = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert len(admitted) == limit
    assert all(r.status_code == 429 and "retry-after" in r.headers for r in refused)
    # Both processes counted against the one shared limit (which of them admitted is down to timing).
    for process in (0, 1):
        served = [r for i, r in enumerate(replies) if i % 2 == process]
        assert {r.headers["x-ratelimit-limit-requests"] for r in served} == {str(limit)}


def store_errors() -> float:
    store = "redis" if settings.REDIS_URL else "memory"
    labels = {"store": store, "operation": "rate_limit"}
    return REGISTRY.get_sample_value("muxer_store_errors_total", labels) or 0.0
