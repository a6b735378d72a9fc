"""Audit events are append-only: in the ORM, in PostgreSQL itself, and in the admin."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models import ProtectedError
from django.test import Client
from django.urls import reverse

from accounts.models import Organization, User
from audit.models import AppendOnlyError, AuditEvent
from audit.services import audit_event_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def event(organization: Organization, owner: User) -> AuditEvent:
    return audit_event_record(
        action="api_key.created",
        organization=organization,
        actor=owner,
        target_type="api_key",
        target_id=42,
        metadata={"name": "production"},
    )


def assert_unchanged(event: AuditEvent) -> None:
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.action, stored.target_id, stored.metadata) == ("api_key.created", "42", {"name": "production"})


def test_it_records_an_event(event: AuditEvent, organization: Organization, owner: User) -> None:
    stored = AuditEvent.objects.get(pk=event.pk)

    assert (stored.organization_id, stored.actor_id) == (organization.pk, owner.pk)
    assert (stored.target_type, stored.target_id) == ("api_key", "42")
    assert stored.created_at is not None


def test_saving_an_existing_event_raises(event: AuditEvent) -> None:
    event.action = "api_key.deleted"

    with pytest.raises(AppendOnlyError):
        event.save()

    assert_unchanged(event)


def test_saving_a_freshly_loaded_event_raises(event: AuditEvent) -> None:
    loaded = AuditEvent.objects.get(pk=event.pk)
    loaded.metadata = {"name": "rewritten"}

    with pytest.raises(AppendOnlyError):
        loaded.save(update_fields=["metadata"])

    assert_unchanged(event)


def test_deleting_an_event_raises(event: AuditEvent) -> None:
    with pytest.raises(AppendOnlyError):
        event.delete()

    assert_unchanged(event)


def test_queryset_update_raises(event: AuditEvent) -> None:
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.update(action="rewritten")

    assert_unchanged(event)


def test_filtered_queryset_update_raises(event: AuditEvent) -> None:
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="rewritten")

    assert_unchanged(event)


def test_queryset_delete_raises(event: AuditEvent) -> None:
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()

    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_filtered_queryset_delete_raises(event: AuditEvent) -> None:
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).delete()

    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_an_organization_with_audit_events_cannot_be_deleted(event: AuditEvent, organization: Organization) -> None:
    with pytest.raises(ProtectedError):
        organization.delete()

    assert AuditEvent.objects.filter(pk=event.pk, organization=organization).exists()


# --- the PostgreSQL trigger ------------------------------------------------------------------


@pytest.mark.postgres
def test_raw_sql_update_is_refused_by_the_database(event: AuditEvent) -> None:
    with (
        pytest.raises(DatabaseError, match="append-only") as excinfo,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE audit_auditevent SET action = %s WHERE id = %s", ["rewritten", event.pk])

    assert "UPDATE" in str(excinfo.value)
    assert_unchanged(event)


@pytest.mark.postgres
def test_raw_sql_delete_is_refused_by_the_database(event: AuditEvent) -> None:
    with (
        pytest.raises(DatabaseError, match="append-only") as excinfo,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])

    assert "DELETE" in str(excinfo.value)
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.postgres
def test_raw_sql_insert_is_still_allowed(event: AuditEvent, organization: Organization) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditevent (organization_id, action, target_type, target_id, metadata, user_agent,"
            " request_id, prev_hash, hash, created_at) VALUES (%s, 'raw.insert', '', '', '{}', '', '', '', '', now())",
            [organization.pk],
        )

    assert AuditEvent.objects.filter(action="raw.insert").count() == 1


# --- the admin is read-only -------------------------------------------------------------------


@pytest.fixture
def admin_client(db: None) -> Client:
    superuser = User.objects.create_superuser("root@example.com", "admin password 123")
    client = Client()
    client.force_login(superuser)
    return client


def test_the_admin_lists_events(admin_client: Client, event: AuditEvent) -> None:
    response = admin_client.get(reverse("admin:audit_auditevent_changelist"))

    assert response.status_code == 200
    assert "api_key.created" in response.content.decode()


def test_the_admin_cannot_add_events(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:audit_auditevent_add")).status_code == 403


def test_the_admin_cannot_post_a_new_event(admin_client: Client, event: AuditEvent) -> None:
    response = admin_client.post(reverse("admin:audit_auditevent_add"), {"action": "forged"})

    assert response.status_code == 403
    assert not AuditEvent.objects.filter(action="forged").exists()


def test_the_admin_shows_an_event_read_only(admin_client: Client, event: AuditEvent) -> None:
    response = admin_client.get(reverse("admin:audit_auditevent_change", args=[event.pk]))

    assert response.status_code == 200
    assert 'name="action"' not in response.content.decode()


def test_the_admin_cannot_change_an_event(admin_client: Client, event: AuditEvent) -> None:
    response = admin_client.post(
        reverse("admin:audit_auditevent_change", args=[event.pk]), {"action": "rewritten", "target_id": "42"}
    )

    assert response.status_code == 403
    assert_unchanged(event)


def test_the_admin_cannot_delete_an_event(admin_client: Client, event: AuditEvent) -> None:
    response = admin_client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert_unchanged(event)
