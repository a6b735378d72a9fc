"""Console: the routing policy page (console/views/routing.py)."""

from __future__ import annotations

import html
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Organization

pytestmark = pytest.mark.django_db


def routing_url(organization: Organization) -> str:
    return reverse("console-routing", args=[organization.slug])


def page(response: Any) -> str:
    return html.unescape(response.content.decode())


def policy(**fields: Any) -> dict[str, Any]:
    return {"routing_strategy": "cascade", "routing_preference": "quality", "rpm_limit": "", "tpm_limit": "", **fields}


def test_an_owner_sees_the_form(owner_client: Client, organization: Organization, catalog: None) -> None:
    body = page(owner_client.get(routing_url(organization)))
    assert 'id="routing-form"' in body
    assert 'value="fake-small"' in body


def test_saving_the_policy_and_limits(owner_client: Client, organization: Organization, catalog: None) -> None:
    response = owner_client.post(
        routing_url(organization),
        policy(
            allowed_models=["fake-small"], allowed_providers=["fake"], rpm_limit="600", max_output_tokens_cap="2048"
        ),
    )
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.routing_strategy == "cascade"
    assert organization.routing_preference == "quality"
    assert organization.allowed_models == ["fake-small"]
    assert organization.allowed_providers == ["fake"]
    assert organization.rpm_limit == 600
    assert organization.tpm_limit is None
    assert organization.max_output_tokens_cap == 2048


def test_bad_input_rerenders_with_400(owner_client: Client, organization: Organization, catalog: None) -> None:
    response = owner_client.post(routing_url(organization), policy(routing_strategy="dice", rpm_limit="-1"))
    assert response.status_code == 400
    body = page(response)
    assert "Select a valid choice." in body
    assert "Ensure this value is greater than or equal to 1." in body
    organization.refresh_from_db()
    assert organization.routing_strategy == "hybrid"


def test_an_api_refusal_shows_its_message(owner_client: Client, organization: Organization, catalog: None) -> None:
    # A model the policy still names but the catalog no longer has: the form keeps offering it, the API refuses it.
    organization.allowed_models = ["ghost-model"]
    organization.save(update_fields=["allowed_models"])
    response = owner_client.post(routing_url(organization), policy(allowed_models=["ghost-model"]))
    assert response.status_code == 400
    assert "unknown model(s): ghost-model." in page(response)
    organization.refresh_from_db()
    assert organization.routing_strategy == "hybrid"


def test_readers_see_the_policy_read_only_and_get_403(
    member_client: Client, organization: Organization, catalog: None
) -> None:
    body = page(member_client.get(routing_url(organization)))
    assert 'id="routing-form"' not in body
    assert 'id="routing-policy"' in body
    assert "Hybrid" in body
    assert member_client.post(routing_url(organization), policy()).status_code == 403
    organization.refresh_from_db()
    assert organization.routing_strategy == "hybrid"


def test_outsiders_get_404(outsider_client: Client, organization: Organization) -> None:
    assert outsider_client.get(routing_url(organization)).status_code == 404
    assert outsider_client.post(routing_url(organization), policy()).status_code == 404
    organization.refresh_from_db()
    assert organization.routing_strategy == "hybrid"
