"""``GET /api/orgs/<org>/audit-events/`` and ``.../audit-events/export``: owners and admins, their own events."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from django.test import AsyncClient
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Organization, Role, User
from audit import exports
from audit.models import AuditEvent
from audit.services import audit_event_record
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory, issue_key

pytestmark = pytest.mark.django_db


def list_url(organization: Organization) -> str:
    return reverse("audit-event-list", args=[organization.slug])


def export_url(organization: Organization) -> str:
    return reverse("audit-events-export", args=[organization.slug])


def as_user(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def with_role(organization: Organization, role: str) -> User:
    return MembershipFactory.create(organization=organization, role=role, user=UserFactory.create()).user


def with_key(organization: Organization, owner: User, scope: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(organization, created_by=owner, scopes=[scope]).secret}")
    return client


def assert_error(response: Any, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param


@pytest.fixture
def history(organization: Organization, owner: User, outsider: User) -> dict[str, AuditEvent]:
    """Ours (three), another organization's, and a platform event; in that order."""
    theirs = outsider.memberships.get().organization
    events = {
        "created": audit_event_record(action="api_key.created", organization=organization, actor=owner,
                                      target_type="api_key", target_id=1, metadata={"name": "ours-1"}),
        "revoked": audit_event_record(action="api_key.revoked", organization=organization, actor=None,
                                      target_type="api_key", target_id=1, metadata={"name": "ours-1"}),
        "team": audit_event_record(action="team.created", organization=organization, actor=owner,
                                   target_type="team", target_id=5, metadata={"name": "ours-team"}),
        "theirs": audit_event_record(action="api_key.created", organization=theirs, actor=outsider,
                                     target_type="api_key", target_id=2, metadata={"name": "theirs-1"}),
        "platform": audit_event_record(action="auth.login", organization=None, actor=owner, target_type="user",
                                       target_id=owner.pk),
    }  # fmt: skip
    return events


def ids(response: Any) -> list[int]:
    return [row["id"] for row in response.json()["data"]]


# --- who may read -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_owners_and_admins_read_their_organizations_events_newest_first(
    organization: Organization, history: dict[str, AuditEvent], role: str
) -> None:
    response = as_user(with_role(organization, role)).get(list_url(organization))

    assert response.status_code == 200
    body = response.json()
    assert (body["object"], body["has_more"], body["next_before"]) == ("list", False, None)
    assert ids(response) == [history["team"].pk, history["revoked"].pk, history["created"].pk]
    first = body["data"][0]
    assert set(first) == set(exports.COLUMNS)
    assert first["hash"] == history["team"].hash
    assert first["metadata"] == {"name": "ours-team"}


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_other_roles_get_403(organization: Organization, history: dict[str, AuditEvent], role: str) -> None:
    client = as_user(with_role(organization, role))

    assert_error(client.get(list_url(organization)), 403, "permission_denied")
    assert_error(client.get(export_url(organization)), 403, "permission_denied")


def test_an_outsider_gets_404(organization: Organization, outsider: User, history: dict[str, AuditEvent]) -> None:
    client = as_user(outsider)

    assert_error(client.get(list_url(organization)), 404, "not_found")
    assert_error(client.get(export_url(organization)), 404, "not_found")


def test_signing_in_is_required(organization: Organization) -> None:
    assert APIClient().get(list_url(organization)).status_code in (401, 403)


def test_another_organizations_events_never_show(
    outsider: User, history: dict[str, AuditEvent], organization: Organization
) -> None:
    theirs = outsider.memberships.get().organization

    response = as_user(outsider).get(list_url(theirs))

    assert ids(response) == [history["theirs"].pk]
    assert "ours-1" not in response.content.decode()


def test_an_admin_key_reads_like_an_admin(
    organization: Organization, owner: User, history: dict[str, AuditEvent]
) -> None:
    response = with_key(organization, owner, "admin").get(list_url(organization))

    assert response.status_code == 200
    assert history["created"].pk in ids(response)


def test_a_read_key_acts_as_a_viewer(organization: Organization, owner: User) -> None:
    assert_error(with_key(organization, owner, "read").get(list_url(organization)), 403, "permission_denied")


def test_an_admin_key_of_another_organization_gets_404(organization: Organization, outsider: User) -> None:
    theirs = outsider.memberships.get().organization

    response = with_key(theirs, outsider, "admin").get(list_url(organization))

    assert_error(response, 404, "not_found")


# --- filters and pages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"action": "api_key.created"}, ["created"]),
        ({"action": "api_key"}, ["revoked", "created"]),
        ({"action": "api_key.*"}, ["revoked", "created"]),
        ({"action": "api"}, []),  # a prefix only up to a dot
        ({"target_type": "team"}, ["team"]),
        ({"target_id": "1"}, ["revoked", "created"]),
        ({"target_type": "api_key", "target_id": "5"}, []),
    ],
)
def test_filters(
    organization: Organization, owner: User, history: dict[str, AuditEvent], query: dict[str, str], expected: list[str]
) -> None:
    response = as_user(owner).get(list_url(organization), query)

    assert response.status_code == 200
    assert ids(response) == [history[name].pk for name in expected]


def test_the_actor_filter(organization: Organization, owner: User, history: dict[str, AuditEvent]) -> None:
    response = as_user(owner).get(list_url(organization), {"actor": owner.pk})

    assert ids(response) == [history["team"].pk, history["created"].pk]


def test_since_and_until(organization: Organization, owner: User, monkeypatch: pytest.MonkeyPatch) -> None:
    for day in (1, 2, 3):
        moment = datetime(2026, 3, day, 12, tzinfo=UTC)
        monkeypatch.setattr(timezone, "now", lambda moment=moment: moment)
        audit_event_record(action=f"test.day{day}", organization=organization)
    monkeypatch.undo()
    client = as_user(owner)

    def actions(query: dict[str, str]) -> list[str]:
        return [row["action"] for row in client.get(list_url(organization), query).json()["data"]]

    assert actions({"since": "2026-03-02"}) == ["test.day3", "test.day2"]
    assert actions({"until": "2026-03-02"}) == ["test.day2", "test.day1"]  # a date: through that day
    assert actions({"since": "2026-03-01T13:00:00Z", "until": "2026-03-03T12:00:00Z"}) == ["test.day2"]


def test_pages_follow_the_cursor(organization: Organization, owner: User) -> None:
    made = [audit_event_record(action="test.page", organization=organization).pk for _ in range(5)]
    client = as_user(owner)

    first = client.get(list_url(organization), {"limit": 2}).json()
    second = client.get(list_url(organization), {"limit": 2, "before": first["next_before"]}).json()
    third = client.get(list_url(organization), {"limit": 2, "before": second["next_before"]}).json()

    assert [row["id"] for row in first["data"] + second["data"] + third["data"]] == made[::-1]
    assert (first["has_more"], second["has_more"], third["has_more"]) == (True, True, False)
    assert third["next_before"] is None


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"before": "-1"}, "before"),
        ({"actor": "bob"}, "actor"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "until"),
        ({"action": "x" * 65}, "action"),
        ({"colour": "red"}, "colour"),
        ({"format": "csv"}, "format"),
    ],
)
def test_bad_filters_get_400_in_the_openai_shape(
    organization: Organization, owner: User, query: dict[str, str], param: str
) -> None:
    assert_error(as_user(owner).get(list_url(organization), query), 400, "invalid_request_error", param)


def test_the_limit_caps_at_500(organization: Organization, owner: User) -> None:
    response = as_user(owner).get(list_url(organization), {"limit": 500})

    assert response.status_code == 200


# --- export -------------------------------------------------------------------------------------


def streamed(response: Any) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()  # type: ignore[arg-type]


def test_csv_export(organization: Organization, owner: User, history: dict[str, AuditEvent]) -> None:
    response = as_user(owner).get(export_url(organization), {"format": "csv"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="audit-{organization.slug}-')
    assert response["Content-Disposition"].endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(streamed(response))))
    assert [int(r["id"]) for r in rows] == [history["created"].pk, history["revoked"].pk, history["team"].pk]
    assert json.loads(rows[0]["metadata"]) == {"name": "ours-1"}


def test_csv_is_the_default_format(organization: Organization, owner: User, history: dict[str, AuditEvent]) -> None:
    response = as_user(owner).get(export_url(organization))

    assert response["Content-Type"] == "text/csv; charset=utf-8"


def test_jsonl_export_with_filters(organization: Organization, owner: User, history: dict[str, AuditEvent]) -> None:
    response = as_user(owner).get(export_url(organization), {"format": "jsonl", "action": "api_key"})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/jsonl; charset=utf-8"
    assert response["Content-Disposition"].endswith('.jsonl"')
    lines = [json.loads(line) for line in streamed(response).splitlines()]
    assert [line["id"] for line in lines] == [history["created"].pk, history["revoked"].pk]
    assert lines[0]["hash"] == history["created"].hash


def test_the_export_never_holds_another_organizations_events(
    organization: Organization, owner: User, history: dict[str, AuditEvent]
) -> None:
    text = streamed(as_user(owner).get(export_url(organization), {"format": "jsonl"}))

    assert "theirs-1" not in text
    assert "auth.login" not in text


@pytest.mark.parametrize(("query", "param"), [({"format": "xml"}, "format"), ({"actor": "x"}, "actor")])
def test_bad_export_parameters_get_400(
    organization: Organization, owner: User, query: dict[str, str], param: str
) -> None:
    assert_error(as_user(owner).get(export_url(organization), query), 400, "invalid_request_error", param)


def test_a_long_export_comes_in_pages(organization: Organization, owner: User, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit import selectors

    original = selectors.audit_event_pages
    monkeypatch.setattr(selectors, "audit_event_pages", lambda **kwargs: original(**{**kwargs, "page_size": 2}))
    made = [audit_event_record(action="test.page", organization=organization).pk for _ in range(5)]

    response = as_user(owner).get(export_url(organization), {"format": "jsonl"})

    assert [json.loads(line)["id"] for line in streamed(response).splitlines()] == made


@pytest.mark.django_db(transaction=True)
async def test_the_export_streams_under_asgi(organization: Organization, owner: User) -> None:
    from asgiref.sync import sync_to_async

    secret = (await sync_to_async(issue_key)(organization, created_by=owner, scopes=["admin"])).secret
    await sync_to_async(audit_event_record)(action="test.asgi", organization=organization)

    response = await AsyncClient().get(
        export_url(organization), {"format": "jsonl"}, headers={"Authorization": f"Bearer {secret}"}
    )

    assert response.status_code == 200
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()  # type: ignore[attr-defined]
    assert [json.loads(line)["action"] for line in body.splitlines()][-1] == "test.asgi"


def test_an_empty_export_has_the_header_only(organization: Organization, owner: User) -> None:
    other = OrganizationFactory.create()
    MembershipFactory.create(organization=other, user=owner, role=Role.OWNER)

    text = streamed(as_user(owner).get(export_url(other), {"format": "csv"}))

    assert text == ",".join(exports.COLUMNS) + "\r\n"


def test_ordering_is_by_chain_position_even_within_one_instant(
    organization: Organization, owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    moment = timezone.now() + timedelta(days=1)
    monkeypatch.setattr(timezone, "now", lambda: moment)
    made = [audit_event_record(action="test.same", organization=organization).pk for _ in range(3)]

    assert ids(as_user(owner).get(list_url(organization), {"action": "test.same"})) == made[::-1]
    assert AuditEvent.objects.filter(pk__in=made).values("created_at").distinct().count() == 1
