"""The request log in the console: a usage record's kept bodies, and the explorer's links to them."""

from __future__ import annotations

import html
import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, Organization, Role, User
from billing.models import RequestLog, UsageRecord
from billing.request_log import request_log_bodies
from tests.factories import MembershipFactory, OrganizationFactory, issue_key

from .conftest import signed_in, user_with_role
from .test_dashboard import record
from .test_usage_explorer import cells

pytestmark = pytest.mark.django_db

QUESTION = 'Write to jane.doe@example.com about <script>alert("x")</script> & "quotes"'


def bodies_url(organization: Organization, usage_id: int) -> str:
    return reverse("console-usage-bodies", args=[organization.slug, usage_id])


def explorer_url(organization: Organization) -> str:
    return reverse("console-usage", args=[organization.slug])


def keep_bodies(usage: UsageRecord, *, request: dict[str, Any], response: dict[str, Any] | None) -> RequestLog:
    bodies = request_log_bodies(request=request, response=response)
    return RequestLog.objects.create(
        usage=usage,
        organization_id=usage.organization_id,
        request_body=bodies["request"],
        response_body=bodies["response"],
        created_at=usage.created_at,
    )


@pytest.fixture
def key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner, name="backend").api_key


@pytest.fixture
def logged(key: APIKey) -> UsageRecord:
    usage = record(key, at=timezone.now() - timedelta(hours=1), cost="0.01", input_tokens=12, output_tokens=3)
    keep_bodies(
        usage,
        request={"model": "auto", "messages": [{"role": "user", "content": QUESTION}]},
        response={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sent to jane.doe@example.com"}}]
        },
    )
    return usage


@pytest.fixture
def plain(key: APIKey) -> UsageRecord:
    return record(key, at=timezone.now() - timedelta(hours=2), cost="0.02")


def pre(text: str, element_id: str) -> str:
    return text.split(f'id="{element_id}"', 1)[1].split(">", 1)[1].split("</pre>", 1)[0]


def test_the_owner_reads_the_bodies_escaped_as_pretty_json(
    owner_client: Client, organization: Organization, logged: UsageRecord
) -> None:
    response = owner_client.get(bodies_url(organization, logged.pk))

    assert response.status_code == 200
    text = response.content.decode()
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(" in text
    request = json.loads(html.unescape(pre(text, "request-body")))
    assert request["messages"][0]["content"] == 'Write to [EMAIL_1] about <script>alert("x")</script> & "quotes"'
    assert '\n  "messages": [\n' in html.unescape(pre(text, "request-body"))
    answer = json.loads(html.unescape(pre(text, "response-body")))
    assert answer["choices"][0]["message"]["content"] == "Sent to [EMAIL_1]"
    assert "jane.doe@example.com" not in text
    assert logged.request_id in text


def test_an_admin_reads_them_too(organization: Organization, logged: UsageRecord) -> None:
    admin = signed_in(user_with_role(organization, Role.ADMIN))

    assert admin.get(bodies_url(organization, logged.pk)).status_code == 200


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_other_roles_get_403(role: Role, organization: Organization, logged: UsageRecord) -> None:
    client = signed_in(user_with_role(organization, role))

    response = client.get(bodies_url(organization, logged.pk))

    assert response.status_code == 403
    assert "jane" not in response.content.decode()
    assert "[EMAIL_1]" not in response.content.decode()


def test_an_outsider_gets_404(outsider_client: Client, organization: Organization, logged: UsageRecord) -> None:
    response = outsider_client.get(bodies_url(organization, logged.pk))

    assert response.status_code == 404
    assert "[EMAIL_1]" not in response.content.decode()


def test_another_organizations_record_is_404_on_our_own_page(
    organization: Organization, logged: UsageRecord, owner: User
) -> None:
    other = OrganizationFactory.create()
    MembershipFactory.create(organization=other, user=owner, role=Role.OWNER)

    response = signed_in(owner).get(bodies_url(other, logged.pk))

    assert response.status_code == 404
    assert "[EMAIL_1]" not in response.content.decode()


def test_a_record_without_bodies_is_404(owner_client: Client, organization: Organization, plain: UsageRecord) -> None:
    assert owner_client.get(bodies_url(organization, plain.pk)).status_code == 404


def test_a_failed_request_shows_that_no_answer_was_kept(
    owner_client: Client, organization: Organization, plain: UsageRecord
) -> None:
    keep_bodies(plain, request={"messages": [{"role": "user", "content": "hi"}]}, response=None)

    text = owner_client.get(bodies_url(organization, plain.pk)).content.decode()

    assert 'id="request-body"' in text
    assert "No answer was kept" in text


def test_the_explorer_links_only_the_records_with_bodies(
    owner_client: Client, organization: Organization, logged: UsageRecord, plain: UsageRecord
) -> None:
    text = owner_client.get(explorer_url(organization)).content.decode()

    rows = cells(text, "usage-rows")
    assert [row[-1] for row in rows] == [
        f'<a href="{bodies_url(organization, logged.pk)}" data-testid="usage-bodies-link">View</a>',
        "",
    ]
    assert "<th>Bodies</th>" in text


def test_the_explorer_shows_no_bodies_column_to_a_member(
    member_client: Client, organization: Organization, logged: UsageRecord
) -> None:
    text = member_client.get(explorer_url(organization)).content.decode()

    assert 'id="usage-rows"' in text
    assert "<th>Bodies</th>" not in text
    assert bodies_url(organization, logged.pk) not in text


def test_an_id_no_row_can_have_is_404(owner_client: Client, organization: Organization) -> None:
    assert owner_client.get(bodies_url(organization, 2**64)).status_code == 404
