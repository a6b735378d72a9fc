"""Console settings: the response cache's lifetime and the request log (console/views/settings.py)."""

from __future__ import annotations

import html

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Organization
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def form_url(organization: Organization) -> str:
    return reverse("console-settings-cache-log", args=[organization.slug])


def settings_url(organization: Organization) -> str:
    return reverse("console-settings", args=[organization.slug])


def fresh(organization: Organization) -> tuple[int, bool, int]:
    row = Organization.objects.get(pk=organization.pk)
    return row.response_cache_ttl_seconds, row.request_log_enabled, row.request_log_retention_days


def test_the_owner_sees_the_form_with_the_current_values(owner_client: Client, organization: Organization) -> None:
    Organization.objects.filter(pk=organization.pk).update(response_cache_ttl_seconds=90, request_log_retention_days=12)

    text = owner_client.get(settings_url(organization)).content.decode()

    form = text.split('id="cache-log-form"', 1)[1].split("</form>", 1)[0]
    assert 'name="response_cache_ttl_seconds" value="90"' in form
    assert 'name="request_log_retention_days" value="12"' in form
    checkbox = form.split('name="request_log_enabled"', 1)[1].split(">", 1)[0]
    assert "checked" not in checkbox


def test_saving_turns_the_log_on_and_is_audited(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(
        form_url(organization),
        {"response_cache_ttl_seconds": "600", "request_log_enabled": "on", "request_log_retention_days": "14"},
    )

    assert response.status_code == 302
    assert fresh(organization) == (600, True, 14)
    event = AuditEvent.objects.get(action="organization.updated")
    assert event.after == {
        "response_cache_ttl_seconds": 600,
        "request_log_enabled": True,
        "request_log_retention_days": 14,
    }
    form = owner_client.get(settings_url(organization)).content.decode().split('id="cache-log-form"', 1)[1]
    checkbox = form.split('name="request_log_enabled"', 1)[1].split(">", 1)[0]
    assert checkbox.endswith(" checked")


def test_an_unchecked_box_turns_the_log_off(owner_client: Client, organization: Organization) -> None:
    Organization.objects.filter(pk=organization.pk).update(request_log_enabled=True)

    response = owner_client.post(
        form_url(organization), {"response_cache_ttl_seconds": "3600", "request_log_retention_days": "30"}
    )

    assert response.status_code == 302
    assert fresh(organization) == (3600, False, 30)


@pytest.mark.parametrize(
    ("ttl", "days", "message"),
    [
        ("2592001", "30", "Ensure this value is less than or equal to 2592000."),
        ("-5", "30", "Ensure this value is greater than or equal to 0."),
        ("3600", "0", "Ensure this value is greater than or equal to 1."),
        ("3600", "3651", "Ensure this value is less than or equal to 3650."),
    ],
)
def test_a_value_out_of_bounds_rerenders_with_400_and_changes_nothing(
    ttl: str, days: str, message: str, owner_client: Client, organization: Organization
) -> None:
    response = owner_client.post(
        form_url(organization),
        {"response_cache_ttl_seconds": ttl, "request_log_enabled": "on", "request_log_retention_days": days},
    )

    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())
    assert fresh(organization) == (3600, False, 30)
    assert not AuditEvent.objects.filter(action="organization.updated").exists()


def test_a_member_reads_the_settings_but_may_not_change_them(member_client: Client, organization: Organization) -> None:
    Organization.objects.filter(pk=organization.pk).update(request_log_enabled=True, request_log_retention_days=9)

    text = member_client.get(settings_url(organization)).content.decode()
    refused = member_client.post(
        form_url(organization), {"response_cache_ttl_seconds": "0", "request_log_retention_days": "1"}
    )

    assert 'id="cache-log-form"' not in text
    facts = text.split('id="cache-log-settings"', 1)[1].split("</dl>", 1)[0]
    assert "answers kept 3600 s" in facts
    assert "on, bodies kept 9 days" in facts
    assert refused.status_code == 403
    assert fresh(organization) == (3600, True, 9)


def test_an_outsider_gets_404(outsider_client: Client, organization: Organization) -> None:
    response = outsider_client.post(
        form_url(organization), {"response_cache_ttl_seconds": "0", "request_log_retention_days": "1"}
    )

    assert response.status_code == 404
    assert fresh(organization) == (3600, False, 30)
