"""Every change an operator makes in the admin is an audit event; operators review the log there, read-only."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.db.models import Model as DjangoModel
from django.test import Client, RequestFactory
from django.urls import reverse
from pytest_django import DjangoAssertNumQueries

from accounts.models import Organization, Team, User
from audit import exports
from audit.chain import chain_verify
from audit.models import AuditEvent
from audit.services import audit_event_record
from providers.models import Model, Provider
from tests.factories import OrganizationFactory, TeamFactory

pytestmark = pytest.mark.django_db


def admin_form_data(obj: DjangoModel, operator: User, **changes: Any) -> dict[str, Any]:
    """What the admin's change form posts for ``obj`` unchanged, with ``changes`` applied: its fields and inlines."""
    model_admin = admin.site._registry[type(obj)]
    request = RequestFactory().get("/")
    request.user = operator
    form = model_admin.get_form(request, obj)(instance=obj)
    data: dict[str, Any] = {}

    def put(prefix: str, bound_form: Any) -> None:
        for name in bound_form.fields:
            value = bound_form[name].value()
            key = f"{prefix}{name}"
            if isinstance(value, bool):
                if value:
                    data[key] = "on"
            elif value is not None:
                data[key] = value

    put("", form)
    for formset, _inline in model_admin.get_formsets_with_inlines(request, obj):
        bound = formset(instance=obj)
        data[f"{bound.prefix}-TOTAL_FORMS"] = str(len(bound.forms))
        data[f"{bound.prefix}-INITIAL_FORMS"] = str(bound.initial_form_count())
        for inline_form in bound.forms:
            put(f"{inline_form.prefix}-", inline_form)
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def body(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


@pytest.fixture
def catalog_model(catalog: None) -> Model:
    return Model.objects.filter(enabled=True).order_by("pk").first()  # type: ignore[return-value]


# --- operators' changes become audit events -------------------------------------------------------


def test_an_operator_changing_a_models_price_is_recorded_with_before_and_after(
    operator_client: Client, operator: User, catalog_model: Model
) -> None:
    old_price = catalog_model.input_price_per_mtok_usd
    data = admin_form_data(catalog_model, operator, input_price_per_mtok_usd="9.990000", _save="Save")

    response = operator_client.post(reverse("admin:providers_model_change", args=[catalog_model.pk]), data)

    assert response.status_code == 302, response.content.decode()[:2000]
    catalog_model.refresh_from_db()
    assert catalog_model.input_price_per_mtok_usd == Decimal("9.99")
    event = AuditEvent.objects.get(action="admin.changed")
    assert (event.actor_id, event.organization_id) == (operator.pk, None)
    assert (event.target_type, event.target_id) == ("providers.model", str(catalog_model.pk))
    assert event.before == {"input_price_per_mtok_usd": str(old_price)}
    assert event.after == {"input_price_per_mtok_usd": "9.990000"}
    assert event.metadata["object"] == catalog_model.name
    assert "Input price per mtok usd" in event.metadata["change"][0]["changed"]["fields"]
    assert event.request_id == response.headers["X-Request-ID"]
    assert chain_verify().intact


def test_disabling_a_model_from_the_list_is_recorded(
    operator_client: Client, operator: User, catalog_model: Model
) -> None:
    data = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-id": str(catalog_model.pk),
        "form-0-quality_tier": str(catalog_model.quality_tier),
        "_save": "Save",
    }  # enabled left out: unticked

    response = operator_client.post(reverse("admin:providers_model_changelist"), data)

    assert response.status_code == 302
    event = AuditEvent.objects.get(action="admin.changed", target_id=str(catalog_model.pk))
    assert (event.before, event.after) == ({"enabled": True}, {"enabled": False})


def test_adding_an_object_records_its_state(operator_client: Client, operator: User) -> None:
    data = {
        "slug": "acme", "name": "Acme AI", "wire_format": "openai", "base_url": "https://api.acme.example/v1",
        "api_key_env": "ACME_API_KEY", "enabled": "on", "_save": "Save",
    }  # fmt: skip

    response = operator_client.post(reverse("admin:providers_provider_add"), data)

    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(slug="acme")
    event = AuditEvent.objects.get(action="admin.added")
    assert (event.target_type, event.target_id) == ("providers.provider", str(provider.pk))
    assert event.before is None
    assert event.after is not None
    assert event.after["slug"] == "acme"
    assert event.after["api_key_env"] == "ACME_API_KEY"  # the variable's name, not a key


def test_deleting_an_organizations_object_records_it_under_that_organization(
    operator_client: Client, organization: Organization
) -> None:
    team = TeamFactory.create(organization=organization, name="Doomed")

    response = operator_client.post(reverse("admin:accounts_team_delete", args=[team.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Team.objects.filter(pk=team.pk).exists()
    event = AuditEvent.objects.get(action="admin.deleted")
    assert (event.organization_id, event.target_type, event.target_id) == (
        organization.pk, "accounts.team", str(team.pk),
    )  # fmt: skip
    assert event.before is not None
    assert event.before["name"] == "Doomed"
    assert event.after is None


def test_a_bulk_delete_records_every_object(operator_client: Client) -> None:
    teams = [TeamFactory.create(organization=OrganizationFactory.create()) for _ in range(3)]

    response = operator_client.post(
        reverse("admin:accounts_team_changelist"),
        {"action": "delete_selected", "_selected_action": [t.pk for t in teams], "post": "yes"},
    )

    assert response.status_code == 302
    events = AuditEvent.objects.filter(action="admin.deleted").order_by("id")
    assert sorted((e.target_id, e.organization_id) for e in events) == sorted(
        (str(t.pk), t.organization_id) for t in teams
    )
    assert chain_verify().intact


def test_a_secret_field_changed_in_the_admin_is_redacted(operator_client: Client, operator: User) -> None:
    target = User.objects.create_user("someone@example.com", "first password 123")
    data = {"password1": "second password 456", "password2": "second password 456", "usable_password": "true"}

    response = operator_client.post(reverse("admin:auth_user_password_change", args=[target.pk]), data)

    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.get(action="admin.changed", target_type="accounts.user")
    assert event.before == {"password": "[redacted]"}
    assert event.after == {"password": "[redacted]"}
    assert "someone@example.com" not in json.dumps(event.metadata)


# --- reviewing the log --------------------------------------------------------------------------


@pytest.fixture
def logged(organization: Organization, owner: User) -> list[AuditEvent]:
    return [
        audit_event_record(action="api_key.created", organization=organization, actor=owner, target_type="api_key",
                           target_id=7, metadata={"name": "=cmd|' /C calc'!A0"}, ip="192.0.2.30", request_id="req_a"),
        audit_event_record(action="team.created", organization=organization, actor=owner, target_type="team",
                           target_id=8, ip="192.0.2.31", request_id="req_b"),
    ]  # fmt: skip


def test_the_changelist_shows_who_did_what_from_where(operator_client: Client, logged: list[AuditEvent]) -> None:
    html = operator_client.get(reverse("admin:audit_auditevent_changelist")).content.decode()

    for text in ("api_key.created", "api_key:7", "192.0.2.30", "req_a", "team:8"):
        assert text in html


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ({"action": "team.created"}, "req_b", "req_a"),
        ({"target_type": "api_key"}, "req_a", "req_b"),
        ({"q": "req_b"}, "req_b", "req_a"),
        ({"q": "192.0.2.30"}, "req_a", "req_b"),
    ],
)
def test_the_changelist_filters_and_searches(
    operator_client: Client, logged: list[AuditEvent], query: dict[str, str], shown: str, hidden: str
) -> None:
    html = operator_client.get(reverse("admin:audit_auditevent_changelist"), query).content.decode()

    assert shown in html
    assert hidden not in html


def test_the_changelist_filters_by_organization(
    operator_client: Client, logged: list[AuditEvent], organization: Organization
) -> None:
    audit_event_record(action="other.thing", organization=OrganizationFactory.create(), request_id="req_other")

    html = operator_client.get(
        reverse("admin:audit_auditevent_changelist"), {"organization__id__exact": organization.pk}
    ).content.decode()

    assert "req_a" in html
    assert "req_other" not in html


def test_selected_events_export_as_csv(operator_client: Client, logged: list[AuditEvent]) -> None:
    response = operator_client.post(
        reverse("admin:audit_auditevent_changelist"),
        {"action": "export_csv", "_selected_action": [e.pk for e in logged]},
    )

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-selected-')
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [r["request_id"] for r in rows] == ["req_a", "req_b"]
    assert list(rows[0]) == list(exports.COLUMNS)
    assert rows[0]["hash"] == logged[0].hash
    assert json.loads(rows[0]["metadata"]) == {"name": "=cmd|' /C calc'!A0"}  # JSON text: never a formula


def test_selected_events_export_as_jsonl(operator_client: Client, logged: list[AuditEvent]) -> None:
    response = operator_client.post(
        reverse("admin:audit_auditevent_changelist"),
        {"action": "export_jsonl", "_selected_action": [logged[1].pk]},
    )

    assert response["Content-Type"] == "application/jsonl; charset=utf-8"
    lines = body(response).splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["team.created"]


def test_the_admin_offers_no_delete_action(operator_client: Client, logged: list[AuditEvent]) -> None:
    html = operator_client.get(reverse("admin:audit_auditevent_changelist")).content.decode()

    assert "delete_selected" not in html
    assert "export_csv" in html


def test_an_event_whose_actor_was_deleted_still_shows(
    operator_client: Client, logged: list[AuditEvent], owner: User
) -> None:
    owner_id = owner.pk
    owner.memberships.all().delete()
    owner.delete()

    changelist = operator_client.get(reverse("admin:audit_auditevent_changelist"))
    detail = operator_client.get(reverse("admin:audit_auditevent_change", args=[logged[0].pk]))

    assert (changelist.status_code, detail.status_code) == (200, 200)
    assert AuditEvent.objects.get(pk=logged[0].pk).actor_id == owner_id
    assert chain_verify().intact


# --- exporting what the filters select, streamed ----------------------------------------------------

EXPORT = "admin:audit_auditevent_export"


def test_the_filtered_selection_exports_as_csv(operator_client: Client, logged: list[AuditEvent]) -> None:
    response = operator_client.get(reverse(EXPORT, args=["csv"]), {"action": "team.created"})

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Disposition"].startswith('attachment; filename="audit-filtered-')
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [(r["action"], r["request_id"], r["hash"]) for r in rows] == [("team.created", "req_b", logged[1].hash)]


def test_the_filtered_export_follows_the_search(operator_client: Client, logged: list[AuditEvent]) -> None:
    response = operator_client.get(reverse(EXPORT, args=["jsonl"]), {"q": "192.0.2.30"})

    assert response["Content-Type"] == "application/jsonl; charset=utf-8"
    assert [json.loads(line)["request_id"] for line in body(response).splitlines()] == ["req_a"]


def test_the_filtered_export_reads_a_page_at_a_time(
    operator_client: Client,
    logged: list[AuditEvent],
    monkeypatch: pytest.MonkeyPatch,
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    from audit import admin as audit_admin

    monkeypatch.setattr(audit_admin, "EXPORT_PAGE_SIZE", 1)
    ours = AuditEvent.objects.filter(pk__in=[e.pk for e in logged])
    with django_assert_num_queries(3):  # a query per page, and one that finds the end
        pages = list(audit_admin.event_pages(ours))

    response = operator_client.get(
        reverse(EXPORT, args=["jsonl"]), {"organization__id__exact": str(logged[0].organization_id)}
    )

    assert [[e.pk for e in page] for page in pages] == [[logged[0].pk], [logged[1].pk]]
    assert [json.loads(line)["id"] for line in body(response).splitlines()] == [logged[0].pk, logged[1].pk]


@pytest.mark.parametrize(("fmt", "query", "status"), [("xml", {}, 404), ("csv", {"no_such_field": "1"}, 400)])
def test_a_bad_export_request_is_refused_not_a_crash(
    operator_client: Client, logged: list[AuditEvent], fmt: str, query: dict[str, str], status: int
) -> None:
    assert operator_client.get(reverse(EXPORT, args=[fmt]), query).status_code == status


def test_the_export_is_for_staff_only(client: Client, owner: User, logged: list[AuditEvent]) -> None:
    client.force_login(owner)

    response = client.get(reverse(EXPORT, args=["csv"]))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_changelist_links_the_export_of_its_selection(operator_client: Client, logged: list[AuditEvent]) -> None:
    html = operator_client.get(
        reverse("admin:audit_auditevent_changelist"), {"action": "team.created"}
    ).content.decode()

    assert f'href="{reverse(EXPORT, args=["csv"])}?action=team.created" id="audit-export-csv"' in html
    assert 'id="audit-export-jsonl"' in html


def test_the_changelist_searches_by_the_actors_email(
    operator_client: Client, logged: list[AuditEvent], owner: User
) -> None:
    audit_event_record(action="other.thing", organization=None, request_id="req_nobody")

    html = operator_client.get(reverse("admin:audit_auditevent_changelist"), {"q": owner.email}).content.decode()

    assert "req_a" in html
    assert "req_nobody" not in html


def test_the_changelist_shows_the_chain(operator_client: Client, logged: list[AuditEvent]) -> None:
    html = operator_client.get(reverse("admin:audit_auditevent_changelist")).content.decode()

    assert f"{logged[0].hash[:10]}" in html
    assert f"{logged[1].prev_hash[:10]} → {logged[1].hash[:10]}" in html


def test_events_cannot_be_added_changed_or_deleted_even_by_a_superuser(
    operator_client: Client, logged: list[AuditEvent]
) -> None:
    event = logged[0]
    detail = operator_client.get(reverse("admin:audit_auditevent_change", args=[event.pk])).content.decode()

    assert operator_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert (
        operator_client.post(
            reverse("admin:audit_auditevent_change", args=[event.pk]), {"action": "forged"}
        ).status_code
        == 403
    )
    assert (
        operator_client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert 'name="_save"' not in detail
    assert event.hash in detail
    assert AuditEvent.objects.get(pk=event.pk).action == "api_key.created"
