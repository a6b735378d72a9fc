"""Events written before the hash chain existed are sealed into it, in id order, by migration 0005."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.chain import chain_verify, event_hash
from audit.models import AuditEvent

seal = importlib.import_module("audit.migrations.0005_chain_backfill_and_purge_trigger").seal_existing


def legacy_rows(n: int) -> list[int]:
    """Rows as the old writer left them: no hash, no link, and times not in id order."""
    start = timezone.now() - timedelta(days=3)
    made = []
    with connection.cursor() as cursor:
        for i in range(n):
            cursor.execute(
                "INSERT INTO audit_auditevent (action, target_type, target_id, metadata, user_agent, request_id,"
                " prev_hash, hash, created_at) VALUES (%s, 'api_key', %s, %s, '', '', '', '', %s)",
                [f"legacy.{i}", str(i), f'{{"n": {i}, "price": 1.5}}', start + timedelta(hours=(i * 7) % 5)],
            )
            made.append(AuditEvent.objects.order_by("-id").values_list("id", flat=True)[0])
    return made


@pytest.mark.django_db(transaction=True)
def test_legacy_events_are_sealed_in_id_order() -> None:
    made = legacy_rows(4)

    with connection.schema_editor() as editor:
        seal(apps, editor)

    events = list(AuditEvent.objects.order_by("id"))
    assert [e.pk for e in events] == made
    assert events[0].prev_hash == ""
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert all(e.hash == event_hash(e) for e in events)
    assert chain_verify().intact


@pytest.mark.django_db(transaction=True)
def test_sealing_twice_changes_nothing() -> None:
    legacy_rows(2)
    with connection.schema_editor() as editor:
        seal(apps, editor)
    hashes = list(AuditEvent.objects.order_by("id").values_list("hash", flat=True))

    with connection.schema_editor() as editor:
        seal(apps, editor)

    assert list(AuditEvent.objects.order_by("id").values_list("hash", flat=True)) == hashes


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_trigger_guards_the_table_again_after_sealing() -> None:
    (first, _) = legacy_rows(2)
    with connection.schema_editor() as editor:
        seal(apps, editor)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET action = 'rewritten' WHERE id = %s", [first])
