"""Live console events: usage writes and budget alerts reach the organization's open pages, and only theirs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse

from accounts.models import APIKey, Organization, User
from billing.alerts import budget_alert_record
from billing.models import Budget, BudgetPeriod, BudgetScope, UsageRecord
from billing.usage import UsageEvent, usage_write_batch
from console import live
from console.gateway import chat
from tests.conftest import FakeUpstream
from tests.factories import OrganizationFactory, issue_key

from .test_playground import as_user, drain

pytestmark = pytest.mark.django_db(transaction=True)


def events_socket(user: Any, organization: Organization) -> WebsocketCommunicator:
    return WebsocketCommunicator(as_user(user), f"/ws/console/{organization.slug}/events/")


def usage_event(key: APIKey, n: int, *, cost: str, status: str = "ok") -> UsageEvent:
    return {
        "request_id": f"live_{key.pk}_{n}", "organization_id": key.organization_id, "api_key_id": key.pk,
        "team_id": None, "user_id": None, "model": "fake-small", "provider": "fake", "input_tokens": 10,
        "output_tokens": 5, "cached_input_tokens": 0, "reasoning_tokens": 0, "usage_estimated": False,
        "cost_usd": cost, "latency_ms": 12, "status": status, "http_status": 200 if status == "ok" else 502,
        "error_code": "", "stream": False, "created_at": time.time(),
    }  # fmt: skip


async def new_key(organization: Organization, owner: User | None = None) -> APIKey:
    return (await sync_to_async(issue_key)(organization, created_by=owner)).api_key


async def test_a_usage_write_in_a_worker_thread_reaches_the_organizations_pages(
    organization: Organization, member: User, owner: User
) -> None:
    key = await new_key(organization, owner)
    communicator = events_socket(member, organization)
    assert (await communicator.connect())[0]

    written = await sync_to_async(usage_write_batch, thread_sensitive=False)(
        [usage_event(key, 1, cost="0.25"), usage_event(key, 2, cost="0.0500000000", status="error")]
    )
    event = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()

    assert written == 2
    assert event == {"type": "usage", "requests": 2, "errors": 1, "cost_usd": "0.3000000000"}


async def test_another_organizations_usage_is_not_sent(organization: Organization, member: User) -> None:
    foreign = await new_key(await sync_to_async(OrganizationFactory.create)())
    communicator = events_socket(member, organization)
    assert (await communicator.connect())[0]

    await sync_to_async(usage_write_batch, thread_sensitive=False)([usage_event(foreign, 1, cost="1")])

    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_a_gateway_request_updates_the_open_dashboard(
    organization: Organization, owner: User, catalog: None, upstream: FakeUpstream
) -> None:
    key = await new_key(organization, owner)
    communicator = events_socket(owner, organization)
    assert (await communicator.connect())[0]

    reply = await chat(
        organization_id=organization.pk,
        key_id=key.pk,
        payload={"model": "fake-small", "messages": [{"role": "user", "content": "Hello live"}]},
    )
    await drain()
    event = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()

    assert reply.status == 200
    assert event["type"] == "usage"
    assert event["requests"] == 1
    assert Decimal(event["cost_usd"]) == Decimal(reply.headers["x-muxer-cost-usd"])


async def test_a_budget_alert_notification_is_sent(organization: Organization, member: User) -> None:
    budget = await sync_to_async(Budget.objects.create)(
        organization=organization, name="daily", scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.DAILY,
        limit_usd=Decimal(2),
    )  # fmt: skip
    communicator = events_socket(member, organization)
    assert (await communicator.connect())[0]

    await sync_to_async(budget_alert_record, thread_sensitive=False)(
        budget=budget, period_start=datetime(2026, 3, 15, tzinfo=UTC), threshold=80, spent_usd=Decimal("1.6")
    )
    event = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()

    assert event["type"] == "budget_alert"
    assert event["threshold"] == 80
    assert event["title"] == "Budget 'daily' reached 80% of $2.00"
    assert isinstance(event["notification_id"], int)


async def test_an_outsider_cannot_listen(organization: Organization, outsider: User) -> None:
    assert await events_socket(outsider, organization).connect() == (False, 4404)


async def test_a_failing_channel_layer_never_breaks_usage_writing(
    organization: Organization, owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await new_key(organization, owner)

    def broken() -> None:
        raise ConnectionError("no channel layer")

    monkeypatch.setattr(live, "get_channel_layer", broken)

    await sync_to_async(usage_write_batch, thread_sensitive=False)([usage_event(key, 1, cost="0.1")])

    assert await sync_to_async(UsageRecord.objects.count)() == 1


def test_publishing_without_any_listener_is_a_no_op(organization: Organization) -> None:
    live.publish(organization.pk, {"type": "usage", "requests": 1, "errors": 0, "cost_usd": "0"})


def test_the_dashboard_page_names_its_events_socket(owner_client: Client, organization: Organization) -> None:
    html = owner_client.get(reverse("console-dashboard", args=[organization.slug])).content.decode()

    assert f'data-socket="/ws/console/{organization.slug}/events/"' in html
    assert "console/live.js" in html
