"""The hash chain: every event links to the one before, and ``audit_verify`` finds any edit, gap or swap."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Organization, User
from audit.chain import canonical_form, chain_verify, event_hash
from audit.models import AuditEvent
from audit.services import audit_event_record
from billing.services import budget_create
from providers.models import Provider
from providers.services import provider_credential_set

from .conftest import tamper, verify_failure, verify_output

pytestmark = pytest.mark.django_db


def record(n: int, organization: Organization | None = None, actor: User | None = None) -> list[AuditEvent]:
    return [
        audit_event_record(
            action=f"test.event_{i}",
            organization=organization,
            actor=actor,
            target_type="thing",
            target_id=i,
            metadata={"i": i, "nested": {"list": [1, 2.5, "x"]}},
        )
        for i in range(n)
    ]


def test_the_first_event_starts_the_chain() -> None:
    (event,) = record(1)

    assert event.prev_hash == ""
    assert len(event.hash) == 64
    assert event.hash == event_hash(AuditEvent.objects.get(pk=event.pk))


def test_each_event_links_to_the_one_before() -> None:
    events = record(4)

    stored = list(AuditEvent.objects.order_by("id"))
    assert [e.pk for e in stored] == [e.pk for e in events]
    assert [e.prev_hash for e in stored[1:]] == [e.hash for e in stored[:-1]]
    assert len({e.hash for e in stored}) == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("created_at", timezone.now() + timedelta(microseconds=1)),
        ("organization_id", 999),
        ("actor_id", 999),
        ("action", "test.forged"),
        ("target_type", "other"),
        ("target_id", "43"),
        ("metadata", {"i": 1}),
        ("before", {"a": 1}),
        ("after", {"a": 2}),
        ("ip", "203.0.113.8"),
        ("user_agent", "curl/8"),
        ("request_id", "req_forged"),
        ("prev_hash", "0" * 64),
    ],
)
def test_the_hash_covers_each_field(field: str, value: object) -> None:
    (event,) = record(1)
    original = event.hash

    setattr(event, field, value)

    assert event_hash(event) != original


def test_the_canonical_form_is_sorted_compact_json_of_every_field_but_the_id() -> None:
    (event,) = record(1)

    form = canonical_form(event).decode()

    body = json.loads(form)
    assert form == json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert set(body) == {
        "v", "created_at", "organization_id", "actor_id", "action", "target_type", "target_id", "metadata",
        "before", "after", "ip", "user_agent", "request_id", "prev_hash",
    }  # fmt: skip
    assert body["created_at"] == event.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_awkward_values_hash_the_same_after_the_database_gives_them_back(organization: Organization) -> None:
    """jsonb rewrites numbers and key order, inet rewrites addresses: the hash must not depend on either."""
    audit_event_record(
        action="test.awkward",
        organization=organization,
        metadata={"big": 1e16, "whole": 2.0, "small": 1e-7, "price": Decimal("0.150000"), "text": "naïve ☃ \u2028"},
        before={"z": 1, "a": [3, 2, 1]},
        after={"nested": {"b": None, "a": True}},
        ip="2001:DB8:0:0:0:0:0:1",
        user_agent="Mozilla/5.0",
        request_id="req_1",
    )

    stored = AuditEvent.objects.get(action="test.awkward")
    assert stored.ip == "2001:db8::1"
    assert stored.hash == event_hash(stored)
    assert chain_verify().intact


def test_time_never_runs_backwards_along_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    (first,) = record(1)
    earlier = first.created_at - timedelta(seconds=5)  # another host with a slow clock
    monkeypatch.setattr(timezone, "now", lambda: earlier)

    (second,) = record(1)

    assert second.created_at == first.created_at
    assert chain_verify().intact


# --- audit_verify -------------------------------------------------------------------------------


def test_verify_passes_an_intact_chain() -> None:
    events = record(3)

    summary = verify_output()

    assert summary.startswith("Audit chain intact: 3 events")
    assert f"ids {events[0].pk}-{events[-1].pk}" in summary
    assert events[-1].hash in summary
    assert "\n" not in summary


def test_verify_passes_an_empty_log() -> None:
    assert verify_output() == "Audit chain intact: no events."


def test_verify_finds_a_modified_field() -> None:
    events = record(3)
    tamper("UPDATE audit_auditevent SET target_id = %s WHERE id = %s", ["99", events[1].pk])

    message = verify_failure()

    assert message == f"Audit chain broken at event {events[1].pk}: its hash does not match its contents."


def test_verify_finds_modified_json() -> None:
    events = record(3)
    tamper("UPDATE audit_auditevent SET metadata = %s WHERE id = %s", ['{"i": 1, "nested": {}}', events[1].pk])

    assert f"broken at event {events[1].pk}:" in verify_failure()


def test_verify_finds_a_rehashed_edit_by_the_broken_link_after_it() -> None:
    """An attacker who recomputes the edited event's hash still breaks the next event's link."""
    events = record(3)
    edited = AuditEvent.objects.get(pk=events[1].pk)
    edited.action = "test.forged"
    tamper(
        "UPDATE audit_auditevent SET action = %s, hash = %s WHERE id = %s",
        ["test.forged", event_hash(edited), edited.pk],
    )

    message = verify_failure()

    assert message.startswith(f"Audit chain broken at event {events[2].pk}: it does not link to the event before it")


def test_verify_finds_a_deleted_event() -> None:
    events = record(4)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[1].pk])

    message = verify_failure()

    assert message == (
        f"Audit chain broken at event {events[2].pk}: it does not link to the event before it ({events[0].pk})."
    )


def test_verify_finds_the_first_event_deleted() -> None:
    events = record(3)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[0].pk])

    message = verify_failure()

    assert message.startswith(f"Audit chain broken at event {events[1].pk}: it is the first event but links")


def test_verify_finds_two_events_swapped() -> None:
    events = record(4)
    a, b = events[1].pk, events[2].pk
    tamper("UPDATE audit_auditevent SET id = %s WHERE id = %s", [-b, b])
    tamper("UPDATE audit_auditevent SET id = %s WHERE id = %s", [b, a])
    tamper("UPDATE audit_auditevent SET id = %s WHERE id = %s", [a, -b])

    assert f"broken at event {a}: it does not link" in verify_failure()


def test_verify_finds_an_event_put_in_place_of_another() -> None:
    """A forged event, correctly hashed and linked to its predecessor, still breaks its successor's link."""
    events = record(3)
    forged = AuditEvent.objects.get(pk=events[1].pk)
    forged.action = "test.forged"
    forged.hash = event_hash(forged)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[1].pk])
    tamper(
        "INSERT INTO audit_auditevent (id, organization_id, actor_id, action, target_type, target_id, metadata,"
        " user_agent, request_id, prev_hash, hash, created_at)"
        " VALUES (%s, NULL, NULL, %s, %s, %s, %s, '', '', %s, %s, %s)",
        [forged.pk, forged.action, forged.target_type, forged.target_id, '{"i": 1, "nested": {"list": [1, 2.5, "x"]}}',
         forged.prev_hash, forged.hash, forged.created_at],
    )  # fmt: skip

    assert AuditEvent.objects.get(pk=events[1].pk).action == "test.forged"
    assert f"broken at event {events[2].pk}: it does not link" in verify_failure()


def test_verify_finds_an_event_inserted_without_a_hash() -> None:
    events = record(2)
    tamper(
        "INSERT INTO audit_auditevent (action, target_type, target_id, metadata, user_agent, request_id, prev_hash,"
        " hash, created_at) VALUES ('raw.insert', '', '', '{}', '', '', %s, '', %s)",
        [events[-1].hash, timezone.now()],
    )
    inserted = AuditEvent.objects.get(action="raw.insert")

    assert verify_failure() == f"Audit chain broken at event {inserted.pk}: its hash does not match its contents."


# --- the services' events ----------------------------------------------------------------------


def test_every_event_the_services_write_is_chained(owner: User, member: User, catalog: None) -> None:
    organization = account_services.organization_create(name="Chained", owner=owner)
    team = account_services.team_create(organization=organization, name="Core", actor=owner)
    account_services.membership_add(organization=organization, user=member, role="member", team=team, actor=owner)
    issued = account_services.api_key_create(organization=organization, name="ci", created_by=owner, team=team)
    account_services.organization_routing_policy_update(organization=organization, actor=owner, allowed_models=[])
    account_services.api_key_revoke(api_key=issued.api_key, actor=owner)
    budget_create(
        organization=organization, actor=owner, scope="organization", period="monthly", limit_usd=Decimal("10")
    )
    provider_credential_set(
        organization=organization, provider=Provider.objects.get(slug="openai"), api_key="sk-" + "a" * 40, actor=owner
    )

    events = list(AuditEvent.objects.order_by("id"))
    assert {
        "organization.created", "team.created", "membership.created", "api_key.created", "api_key.revoked",
        "budget.created", "provider_credential.set",
    } <= {e.action for e in events}  # fmt: skip
    assert all(len(e.hash) == 64 and e.hash == event_hash(e) for e in events)
    report = chain_verify()
    assert (report.intact, report.count) == (True, len(events))


# --- concurrency (PostgreSQL) --------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_linear_chain() -> None:
    """Eight threads, each with its own connection and transactions, append at once: still one line."""
    threads, per_thread = 8, 15
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                audit_event_record(action="test.concurrent", organization=None, target_id=f"{n}-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    events = list(AuditEvent.objects.order_by("id"))
    assert len(events) == threads * per_thread
    # A fork would show as two events naming the same predecessor.
    assert len({e.prev_hash for e in events}) == len(events)
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert chain_verify().intact
    assert connection.vendor == "postgresql"
