"""Operators read usage in the admin: read-only, filtered, with the totals of the selection."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries

from accounts.models import APIKey, Organization, User
from billing.admin import usage_totals
from billing.models import UsageRecord, UsageStatus
from tests.factories import OrganizationFactory, issue_key

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:billing_usagerecord_changelist"


def record(api_key: APIKey, request_id: str, *, model: str = "fake-small", ok: bool = True, cost: str = "0.5",
           tokens: tuple[int, int] = (10, 20)) -> UsageRecord:  # fmt: skip
    return UsageRecord.objects.create(
        request_id=request_id, organization_id=api_key.organization_id, api_key=api_key, model=model,
        provider="fake", status=UsageStatus.OK if ok else UsageStatus.ERROR, http_status=200 if ok else 502,
        input_tokens=tokens[0], output_tokens=tokens[1], cost_usd=Decimal(cost), created_at=timezone.now(),
    )  # fmt: skip


@pytest.fixture
def records(organization: Organization, owner: User, catalog: None) -> dict[str, UsageRecord]:
    ours = issue_key(organization, created_by=owner).api_key
    theirs = issue_key(OrganizationFactory.create()).api_key
    return {
        "a": record(ours, "req_a", cost="0.25", tokens=(100, 50)),
        "b": record(ours, "req_b", model="fake-large", ok=False, cost="0", tokens=(40, 0)),
        "c": record(theirs, "req_c", cost="1.5", tokens=(1000, 2000)),
    }


def totals(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-testid="usage-totals-([a-z-]+)">([^<]*)<', html))


def test_a_tenant_user_is_sent_to_the_admin_login(client: Client, owner: User) -> None:
    client.force_login(owner)

    response = client.get(reverse(CHANGELIST))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_totals_cover_every_record(admin_client: Client, records: dict[str, UsageRecord]) -> None:
    html = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert totals(html) == {
        "requests": "3", "errors": "1", "input-tokens": "1140", "output-tokens": "2050", "cost": "1.750000",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("organization", {"requests": "2", "errors": "1", "input-tokens": "140", "output-tokens": "50",
                          "cost": "0.250000"}),
        ({"status__exact": "error"}, {"requests": "1", "errors": "1", "input-tokens": "40", "output-tokens": "0",
                                      "cost": "0.000000"}),
        ({"model": "fake-large"}, {"requests": "1", "errors": "1", "input-tokens": "40", "output-tokens": "0",
                                   "cost": "0.000000"}),
        ({"q": "req_c"}, {"requests": "1", "errors": "0", "input-tokens": "1000", "output-tokens": "2000",
                          "cost": "1.500000"}),
    ],
)  # fmt: skip
def test_the_totals_follow_the_filters_and_search(
    admin_client: Client,
    records: dict[str, UsageRecord],
    organization: Organization,
    query: dict[str, str] | str,
    expected: dict[str, str],
) -> None:
    params = {"organization__id__exact": str(organization.pk)} if isinstance(query, str) else query

    html = admin_client.get(reverse(CHANGELIST), params).content.decode()

    assert totals(html) == expected


def test_the_totals_are_one_query(
    records: dict[str, UsageRecord], django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    with django_assert_num_queries(1):
        found = usage_totals(UsageRecord.objects.filter(provider="fake"))

    assert (found["requests"], found["input_tokens"], found["cost_usd"]) == (3, 1140, Decimal("1.75"))


def test_usage_is_read_only(admin_client: Client, records: dict[str, UsageRecord]) -> None:
    row = records["a"]
    changelist = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert admin_client.get(reverse("admin:billing_usagerecord_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:billing_usagerecord_change", args=[row.pk]), {"cost_usd": "0"}).status_code
        == 403
    )
    assert (
        admin_client.post(reverse("admin:billing_usagerecord_delete", args=[row.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert "delete_selected" not in changelist
    row.refresh_from_db()
    assert row.cost_usd == Decimal("0.25")
