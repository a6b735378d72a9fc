"""Writes for organizations and API keys: what is stored, and what is audited."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import models
from django.utils import timezone

from accounts import keys, services
from accounts.models import APIKey, Membership, Organization, Role, User
from audit.models import AuditEvent
from tests.factories import TeamFactory, UserFactory, issue_key

pytestmark = pytest.mark.django_db


def stored_strings(model: type[models.Model], **filters: Any) -> list[str]:
    """Every column of every matching row, as the database returns it, rendered to text."""
    rows = model._default_manager.filter(**filters).values()
    return [json.dumps(value, default=str) for row in rows for value in row.values()]


def test_api_key_create_stores_the_lookup_prefix_and_the_hmac_digest(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)
    row = APIKey.objects.get(pk=issued.api_key.pk)

    assert keys.is_well_formed(issued.secret)
    assert row.prefix == issued.secret[:16]
    assert row.digest == keys.key_digest(issued.secret)


def test_api_key_create_stores_the_secret_in_no_column(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner, name="production")
    secret_part = issued.secret[16:]  # everything beyond the non-secret lookup prefix

    values = stored_strings(APIKey, pk=issued.api_key.pk)
    assert len(values) == len(APIKey._meta.concrete_fields)
    assert not [v for v in values if issued.secret in v or secret_part in v]


def test_api_key_create_puts_the_secret_in_no_audit_event(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)
    secret_part = issued.secret[16:]

    values = stored_strings(AuditEvent)
    assert values  # the creation event is there to be searched
    assert not [v for v in values if issued.secret in v or secret_part in v]


def test_api_key_create_records_an_audit_event(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner, name="ci key", allowed_models=("fake-small",))

    event = AuditEvent.objects.get(action="api_key.created")
    assert event.organization_id == organization.pk
    assert event.actor_id == owner.pk
    assert (event.target_type, event.target_id) == ("api_key", str(issued.api_key.pk))
    assert event.metadata["name"] == "ci key"
    assert event.metadata["prefix"] == issued.api_key.prefix
    assert event.metadata["allowed_models"] == ["fake-small"]


def test_api_key_create_rejects_a_team_from_another_organization(organization: Organization, owner: User) -> None:
    foreign_team = TeamFactory.create()
    assert foreign_team.organization_id != organization.pk

    with pytest.raises(ValueError, match="another organization"):
        issue_key(organization, created_by=owner, team=foreign_team)

    assert APIKey.objects.count() == 0
    assert not AuditEvent.objects.filter(action="api_key.created").exists()


def test_api_key_create_accepts_a_team_from_the_same_organization(organization: Organization, owner: User) -> None:
    team = TeamFactory.create(organization=organization)

    issued = issue_key(organization, created_by=owner, team=team)

    assert APIKey.objects.get(pk=issued.api_key.pk).team_id == team.pk


def test_api_key_create_rejects_a_malformed_adopted_secret(organization: Organization, owner: User) -> None:
    with pytest.raises(ValueError, match="well-formed"):
        issue_key(organization, created_by=owner, secret="mm_live_" + "x" * 38)

    assert APIKey.objects.count() == 0


def test_api_key_revoke_sets_revoked_at(organization: Organization, owner: User) -> None:
    api_key = issue_key(organization, created_by=owner).api_key
    before = timezone.now()

    services.api_key_revoke(api_key=api_key, actor=owner)

    revoked_at = APIKey.objects.get(pk=api_key.pk).revoked_at
    assert revoked_at is not None
    assert before <= revoked_at <= timezone.now()


def test_api_key_revoke_records_an_audit_event(organization: Organization, owner: User) -> None:
    api_key = issue_key(organization, created_by=owner).api_key

    services.api_key_revoke(api_key=api_key, actor=owner)

    event = AuditEvent.objects.get(action="api_key.revoked")
    assert event.organization_id == organization.pk
    assert event.actor_id == owner.pk
    assert (event.target_type, event.target_id) == ("api_key", str(api_key.pk))
    assert event.metadata["prefix"] == api_key.prefix


def test_api_key_revoke_is_idempotent(organization: Organization, owner: User) -> None:
    api_key = issue_key(organization, created_by=owner).api_key
    first = services.api_key_revoke(api_key=api_key, actor=owner)

    second = services.api_key_revoke(api_key=api_key, actor=owner)

    assert second.revoked_at == first.revoked_at
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1


def test_api_key_revoke_keeps_the_first_revocation_time_for_a_stale_instance(
    organization: Organization, owner: User
) -> None:
    stale = issue_key(organization, created_by=owner).api_key
    first = services.api_key_revoke(api_key=APIKey.objects.get(pk=stale.pk), actor=owner)

    services.api_key_revoke(api_key=stale, actor=owner)  # stale.revoked_at is still None in memory

    assert APIKey.objects.get(pk=stale.pk).revoked_at == first.revoked_at
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1


def test_organization_create_makes_the_creator_its_owner(db: None) -> None:
    creator = UserFactory.create()

    organization = services.organization_create(name="Acme Labs", owner=creator)

    membership = Membership.objects.get(organization=organization)
    assert membership.user_id == creator.pk
    assert membership.role == Role.OWNER
    assert organization.slug == "acme-labs"


def test_organization_create_records_an_audit_event(db: None) -> None:
    creator = UserFactory.create()

    organization = services.organization_create(name="Acme Labs", owner=creator)

    event = AuditEvent.objects.get(action="organization.created")
    assert (event.organization_id, event.actor_id) == (organization.pk, creator.pk)
    assert event.metadata == {"name": "Acme Labs", "slug": "acme-labs"}


def test_organization_create_deduplicates_slugs(db: None) -> None:
    creator = UserFactory.create()

    slugs = [services.organization_create(name="Acme", owner=creator).slug for _ in range(3)]

    assert slugs == ["acme", "acme-2", "acme-3"]


def test_organization_create_deduplicates_an_explicit_slug(db: None) -> None:
    creator = UserFactory.create()
    services.organization_create(name="First", owner=creator, slug="shared")

    second = services.organization_create(name="Second", owner=creator, slug="shared")

    assert second.slug == "shared-2"


def test_organization_create_falls_back_when_the_name_has_no_slug(db: None) -> None:
    organization = services.organization_create(name="!!!", owner=UserFactory.create())

    assert organization.slug == "org"


def test_api_key_expiry_is_stored(organization: Organization, owner: User) -> None:
    expires_at = timezone.now() + timedelta(days=30)

    issued = issue_key(organization, created_by=owner, expires_at=expires_at)

    assert APIKey.objects.get(pk=issued.api_key.pk).expires_at == expires_at
