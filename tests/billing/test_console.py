"""The console's recommendations page: members only, the figures of the API, a window to choose."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Organization, Role, User
from billing.models import UsageRecord, UsageStatus
from providers.models import Model
from tests.factories import MembershipFactory, UserFactory, issue_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def repeated_usage(organization: Organization, owner: User, catalog: None) -> None:
    """fake-large ($1/$2 per million) answering the same hard request three times: two repeats at $0.30."""
    Model.objects.exclude(provider__slug="fake").update(enabled=False)
    key = issue_key(organization, created_by=owner).api_key
    for n in range(3):
        UsageRecord.objects.create(
            request_id=f"console_{n}", organization=organization, api_key=key, model="fake-large", provider="fake",
            input_tokens=100_000, output_tokens=100_000, cost_usd=Decimal("0.30"), status=UsageStatus.OK,
            http_status=200, complexity=0.9, request_fingerprint="c" * 64,
            created_at=timezone.now() - timedelta(days=1, minutes=n),
        )  # fmt: skip


def page(organization: Organization) -> str:
    return reverse("console-recommendations", args=[organization.slug])


def test_a_member_sees_the_recommendations_with_their_savings(
    client: Client, organization: Organization, member: User, repeated_usage: None
) -> None:
    client.force_login(member)

    response = client.get(page(organization))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Savings recommendations" in html
    assert "Cache repeated requests" in html
    assert '<td class="money">$0.60</td>' in html
    assert "about <strong>$0.60</strong> a month could be saved" in html
    assert organization.name in html


def test_the_window_can_be_chosen(
    client: Client, organization: Organization, member: User, repeated_usage: None
) -> None:
    client.force_login(member)

    response = client.get(page(organization), {"days": 10})

    # $0.60 in 10 days, x 30/10.
    assert '<td class="money">$1.80</td>' in response.content.decode()
    assert "From the last 10 days of usage" in response.content.decode()


@pytest.mark.parametrize("days", ["0", "400", "soon"])
def test_a_bad_window_is_a_400(client: Client, organization: Organization, member: User, days: str) -> None:
    client.force_login(member)

    response = client.get(page(organization), {"days": days})

    assert response.status_code == 400
    assert 'class="error"' in response.content.decode()


def test_nothing_to_recommend_says_so(client: Client, organization: Organization, owner: User) -> None:
    client.force_login(owner)

    response = client.get(page(organization))

    assert response.status_code == 200
    assert "Nothing to recommend from the last 30 days of usage." in response.content.decode()


def test_a_viewer_is_a_member_too(client: Client, organization: Organization, repeated_usage: None) -> None:
    viewer = MembershipFactory.create(organization=organization, role=Role.VIEWER, user=UserFactory.create()).user
    client.force_login(viewer)

    assert client.get(page(organization)).status_code == 200


def test_an_outsider_gets_404(client: Client, organization: Organization, outsider: User, repeated_usage: None) -> None:
    client.force_login(outsider)

    response = client.get(page(organization))

    assert response.status_code == 404
    assert b"Cache repeated requests" not in response.content


def test_an_unknown_organization_is_404_too(client: Client, member: User) -> None:
    client.force_login(member)

    assert client.get(reverse("console-recommendations", args=["no-such-org"])).status_code == 404


def test_an_anonymous_visitor_is_sent_to_sign_in(client: Client, organization: Organization) -> None:
    response = client.get(page(organization))

    assert response.status_code == 302
    assert response["Location"].startswith(str(settings.LOGIN_URL))
    assert "next=" in response["Location"]
