"""Retention: the oldest events go as one block, an ``audit.purged`` event anchors what remains, and on
PostgreSQL the trigger lets only such a purge delete, and only what is old enough."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from audit.chain import PURGE_ACTION, chain_verify
from audit.models import AuditEvent
from audit.services import audit_event_record, audit_events_purge, audit_retention_apply
from audit.tasks import audit_retention_apply_task

from .conftest import tamper, verify_failure, verify_output

pytestmark = pytest.mark.django_db


@contextmanager
def clock(moment: datetime) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timezone, "now", lambda: moment)
        yield


def events_at(days_ago: int, n: int, label: str = "old") -> list[AuditEvent]:
    with clock(timezone.now() - timedelta(days=days_ago)):
        return [audit_event_record(action=f"test.{label}", organization=None, target_id=i) for i in range(n)]


def test_it_deletes_the_events_older_than_the_retention_and_anchors_the_rest() -> None:
    old = events_at(400, 3)
    recent = events_at(10, 2, "recent")

    result = audit_retention_apply()

    assert result is not None
    assert result.count == 3
    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)) == [
        "test.recent", "test.recent", PURGE_ACTION,
    ]  # fmt: skip
    purge = AuditEvent.objects.get(action=PURGE_ACTION)
    assert purge.metadata["count"] == 3
    assert purge.metadata["anchor_hash"] == old[-1].hash
    assert purge.metadata["last_purged_id"] == old[-1].pk
    assert recent[0].prev_hash == old[-1].hash
    assert verify_output().startswith("Audit chain intact: 3 events")
    assert "after a purge" in verify_output()


def test_nothing_old_enough_deletes_nothing_and_records_nothing() -> None:
    events_at(10, 2)

    result = audit_retention_apply()

    assert result is not None
    assert result.count == 0
    assert not AuditEvent.objects.filter(action=PURGE_ACTION).exists()
    assert AuditEvent.objects.count() == 2


def test_purging_every_event_leaves_the_purge_event_linked_to_the_anchor() -> None:
    old = events_at(400, 2)

    audit_retention_apply()

    (purge,) = AuditEvent.objects.all()
    assert purge.action == PURGE_ACTION
    assert purge.prev_hash == old[-1].hash == purge.metadata["anchor_hash"]
    assert chain_verify().intact
    assert chain_verify().anchored


def test_successive_purges_keep_the_chain_verifiable() -> None:
    events_at(800, 2, "oldest")
    events_at(500, 2, "older")
    events_at(10, 1, "recent")

    first = audit_events_purge(older_than=timezone.now() - timedelta(days=600))
    second = audit_retention_apply()

    assert (first.count, second.count if second else None) == (2, 2)
    assert set(AuditEvent.objects.values_list("action", flat=True)) == {"test.recent", PURGE_ACTION}
    # The first purge's event was itself older than neither cutoff: it stays, the chain runs through it.
    assert AuditEvent.objects.filter(action=PURGE_ACTION).count() == 2
    assert chain_verify().intact


def test_a_block_ends_at_the_first_event_that_is_young_enough() -> None:
    """Rows out of time order (legacy ones): deleting by date alone would leave a hole, so the purge
    stops at the first young one."""
    old = events_at(400, 3)
    tamper("UPDATE audit_auditevent SET created_at = %s WHERE id = %s", [timezone.now(), old[1].pk])

    result = audit_events_purge(older_than=timezone.now() - timedelta(days=365))

    assert result.count == 1
    assert AuditEvent.objects.filter(pk=old[2].pk).exists()


def test_the_first_survivor_must_link_to_an_anchor() -> None:
    events_at(400, 2)
    recent = events_at(10, 2, "recent")
    audit_retention_apply()
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [recent[0].pk])

    assert verify_failure() == (
        f"Audit chain broken at event {recent[1].pk}: "
        "it is the first event but links to an event that no purge removed."
    )


def test_retention_zero_keeps_everything(settings: SettingsWrapper) -> None:
    settings.MUXER_AUDIT_RETENTION_DAYS = 0
    events_at(4000, 2)

    assert audit_retention_apply() is None
    assert AuditEvent.objects.count() == 2


@pytest.mark.parametrize("age", [timedelta(hours=23), timedelta(0), timedelta(days=-1)])
def test_the_cutoff_must_be_at_least_a_day_old(age: timedelta) -> None:
    events_at(400, 1)

    with pytest.raises(ValueError, match="at least a day"):
        audit_events_purge(older_than=timezone.now() - age)

    assert AuditEvent.objects.count() == 1


def test_the_command_purges_and_says_how_many() -> None:
    events_at(400, 3)
    out = StringIO()

    call_command("audit_purge", stdout=out)

    assert out.getvalue().startswith("Deleted 3 audit events older than ")
    assert AuditEvent.objects.get().action == PURGE_ACTION


def test_the_command_dry_run_only_counts() -> None:
    events_at(40, 2)
    out = StringIO()

    call_command("audit_purge", "--days", "30", "--dry-run", stdout=out)

    assert out.getvalue().startswith("2 audit events older than ")
    assert AuditEvent.objects.count() == 2


def test_the_command_takes_a_number_of_days() -> None:
    events_at(40, 2)

    call_command("audit_purge", "--days", "30", stdout=StringIO())

    assert AuditEvent.objects.get().metadata["count"] == 2


def test_the_daily_task_applies_the_retention() -> None:
    events_at(400, 2)

    assert audit_retention_apply_task.delay().get() == 2
    assert settings.CELERY_BEAT_SCHEDULE["audit-retention"]["task"] == audit_retention_apply_task.name


# --- the trigger (PostgreSQL) --------------------------------------------------------------------


def delete_inside(settings_sql: list[tuple[str, str]], event_id: int) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        for name, value in settings_sql:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event_id])


@pytest.mark.postgres
@pytest.mark.parametrize(
    "settings_sql",
    [
        [],
        [("muxer.audit_purge", "on")],
        [("muxer.audit_purge_before", "CUTOFF")],
        [("muxer.audit_purge", "off"), ("muxer.audit_purge_before", "CUTOFF")],
        [("muxer.audit_purge", "on"), ("muxer.audit_purge_before", "")],
    ],
)
def test_the_trigger_refuses_a_delete_without_both_settings(settings_sql: list[tuple[str, str]]) -> None:
    (event,) = events_at(400, 1)
    cutoff = (timezone.now() - timedelta(days=365)).isoformat()
    values = [(name, cutoff if value == "CUTOFF" else value) for name, value in settings_sql]

    with pytest.raises(DatabaseError, match="append-only"):
        delete_inside(values, event.pk)

    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.postgres
def test_the_trigger_refuses_to_delete_an_event_younger_than_the_cutoff() -> None:
    (event,) = events_at(10, 1)
    cutoff = (timezone.now() - timedelta(days=365)).isoformat()

    with pytest.raises(DatabaseError, match="append-only"):
        delete_inside([("muxer.audit_purge", "on"), ("muxer.audit_purge_before", cutoff)], event.pk)

    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.postgres
def test_the_trigger_refuses_a_cutoff_less_than_a_day_old() -> None:
    """Even for an event older than it: nothing from the last day can go, whatever a transaction claims."""
    with clock(timezone.now() - timedelta(hours=3)):
        (event,) = events_at(0, 1)
    cutoff = (timezone.now() - timedelta(hours=1)).isoformat()

    with pytest.raises(DatabaseError, match="append-only"):
        delete_inside([("muxer.audit_purge", "on"), ("muxer.audit_purge_before", cutoff)], event.pk)

    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.postgres
def test_the_trigger_still_refuses_updates_during_a_purge() -> None:
    (event,) = events_at(400, 1)
    cutoff = (timezone.now() - timedelta(days=365)).isoformat()

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('muxer.audit_purge', 'on', true)")
        cursor.execute("SELECT set_config('muxer.audit_purge_before', %s, true)", [cutoff])
        cursor.execute("UPDATE audit_auditevent SET action = 'rewritten' WHERE id = %s", [event.pk])

    assert AuditEvent.objects.get(pk=event.pk).action == "test.old"


@pytest.mark.postgres
def test_the_trigger_lets_the_purge_through() -> None:
    (event,) = events_at(400, 1)
    cutoff = (timezone.now() - timedelta(days=365)).isoformat()

    delete_inside([("muxer.audit_purge", "on"), ("muxer.audit_purge_before", cutoff)], event.pk)

    assert not AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.postgres
def test_the_purge_switches_itself_off_even_inside_a_longer_transaction() -> None:
    """The settings are transaction-local; called inside an outer transaction (as here, the test's), the
    purge turns them off itself, so nothing later in that transaction can delete."""
    events_at(400, 1)
    audit_retention_apply()
    (event,) = events_at(0, 1, "later")
    tamper(
        "UPDATE audit_auditevent SET created_at = %s WHERE id = %s", [timezone.now() - timedelta(days=400), event.pk]
    )

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])

    assert AuditEvent.objects.filter(pk=event.pk).exists()
