"""The usage explorer: GET filters, totals per group, raw records, and the CSV export with the same filters."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, Organization, Role, User
from billing.models import UsageStatus
from tests.factories import OrganizationFactory, issue_key

from .conftest import signed_in, user_with_role
from .test_dashboard import record

pytestmark = pytest.mark.django_db


def page(organization: Organization) -> str:
    return reverse("console-usage", args=[organization.slug])


@pytest.fixture
def keys(organization: Organization, owner: User) -> tuple[APIKey, APIKey]:
    return (
        issue_key(organization, created_by=owner, name="backend").api_key,
        issue_key(organization, created_by=owner, name="batch").api_key,
    )


@pytest.fixture
def usage(keys: tuple[APIKey, APIKey]) -> None:
    backend, batch = keys
    now = timezone.now()
    record(backend, at=now - timedelta(hours=1), cost="0.40", model="fake-medium", input_tokens=100, output_tokens=10)
    record(backend, at=now - timedelta(hours=2), cost="0.10", input_tokens=50, output_tokens=5)
    record(batch, at=now - timedelta(hours=3), cost="0.05", status=UsageStatus.ERROR, input_tokens=7)
    record(batch, at=now - timedelta(days=60), cost="5.00")  # outside the default 30 days
    record(issue_key(OrganizationFactory.create()).api_key, at=now - timedelta(hours=1), cost="9.00")


def cells(html: str, table_id: str) -> list[list[str]]:
    table = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_it_sums_the_last_30_days_per_day_by_default(
    owner_client: Client, organization: Organization, usage: None
) -> None:
    response = owner_client.get(page(organization))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="usage-filter-form"' in html
    total = html.split("<tfoot>", 1)[1]
    assert ">3<" in total  # three requests in 30 days
    assert "$0.55 USD" in total
    assert 'id="usage-rows"' in html


def test_it_groups_by_api_key_with_names(owner_client: Client, organization: Organization, usage: None) -> None:
    html = owner_client.get(page(organization), {"group_by": "api_key"}).content.decode()

    assert cells(html, "usage-table") == [
        ["backend", "2", "0", "150", "15", "$0.50 USD"],
        ["batch", "1", "1", "7", "0", "$0.05 USD"],
    ]


def test_filters_narrow_the_groups_and_the_records(
    owner_client: Client, organization: Organization, keys: tuple[APIKey, APIKey], usage: None
) -> None:
    html = owner_client.get(page(organization), {"group_by": "model", "api_key": str(keys[0].pk)}).content.decode()

    assert cells(html, "usage-table") == [
        ["fake-medium", "1", "0", "100", "10", "$0.40 USD"],
        ["fake-small", "1", "0", "50", "5", "$0.10 USD"],
    ]
    assert len(cells(html, "usage-rows")) == 2


def test_status_filter_and_group(owner_client: Client, organization: Organization, usage: None) -> None:
    html = owner_client.get(page(organization), {"group_by": "status", "status": "error"}).content.decode()

    assert cells(html, "usage-table") == [["Error", "1", "1", "7", "0", "$0.05 USD"]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday"}, "Enter a valid date."),
        ({"since": "2026-03-10", "until": "2026-03-01"}, "&#x27;From&#x27; must not be after &#x27;until&#x27;."),
        ({"group_by": "colour"}, "Select a valid choice."),
        ({"status": "maybe"}, "Select a valid choice."),
        ({"page": "0"}, "greater than or equal to 1"),
    ],
)
def test_a_bad_filter_is_a_400_with_the_message(
    owner_client: Client, organization: Organization, params: dict[str, str], message: str
) -> None:
    response = owner_client.get(page(organization), params)

    assert response.status_code == 400
    assert message in response.content.decode()


def test_another_organizations_key_is_not_a_choice(owner_client: Client, organization: Organization) -> None:
    foreign = issue_key(OrganizationFactory.create()).api_key

    response = owner_client.get(page(organization), {"api_key": foreign.pk})

    assert response.status_code == 400


def test_the_export_link_carries_the_filters_and_gives_those_records(
    owner_client: Client, organization: Organization, keys: tuple[APIKey, APIKey], usage: None
) -> None:
    today = timezone.now().astimezone(UTC).date()
    params = {"api_key": str(keys[0].pk), "since": str(today - timedelta(days=2)), "until": str(today)}
    html = owner_client.get(page(organization), {**params, "group_by": "model"}).content.decode()
    href = html.split('id="usage-export"', 1)[1].split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")

    assert urlsplit(href).path == reverse("usage-export", args=[organization.slug])
    assert {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()} == params
    response = owner_client.get(href)
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))  # type: ignore[attr-defined]
    assert sorted(Decimal(row["cost_usd"]) for row in rows) == [Decimal("0.10"), Decimal("0.40")]
    assert {row["api_key_id"] for row in rows} == {str(keys[0].pk)}


def test_records_are_paginated(owner_client: Client, organization: Organization, keys: tuple[APIKey, APIKey]) -> None:
    moment = datetime.now(UTC) - timedelta(hours=1)
    for n in range(51):
        record(keys[0], at=moment - timedelta(seconds=n), cost="0.01")

    first = owner_client.get(page(organization)).content.decode()
    second = owner_client.get(page(organization), {"page": 2}).content.decode()

    assert len(cells(first, "usage-rows")) == 50
    assert 'rel="next"' in first
    assert len(cells(second, "usage-rows")) == 1
    assert "Page 2 of 2 (51 records)" in second


def test_a_viewer_may_explore(organization: Organization, usage: None) -> None:
    assert signed_in(user_with_role(organization, Role.VIEWER)).get(page(organization)).status_code == 200


def test_an_outsider_gets_404(outsider_client: Client, organization: Organization, usage: None) -> None:
    response = outsider_client.get(page(organization))

    assert response.status_code == 404
    assert b"usage-table" not in response.content
