"""The console's audit log page: owners and admins see their organization's events, with filters and exports."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Organization, Role, User
from audit.models import AuditEvent
from audit.services import audit_event_record
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def page(organization: Organization) -> str:
    return reverse("console-audit", args=[organization.slug])


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def events(organization: Organization, owner: User, outsider: User) -> list[AuditEvent]:
    theirs = outsider.memberships.get().organization
    return [
        audit_event_record(action="api_key.created", organization=organization, actor=owner, target_type="api_key",
                           target_id=11, ip="192.0.2.40", request_id="req_ours_1"),
        audit_event_record(action="team.created", organization=organization, actor=None, target_type="team",
                           target_id=12, request_id="req_ours_2"),
        audit_event_record(action="api_key.created", organization=theirs, actor=outsider, request_id="req_theirs"),
    ]  # fmt: skip


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_owners_and_admins_see_their_events(organization: Organization, events: list[AuditEvent], role: str) -> None:
    user = MembershipFactory.create(organization=organization, role=role, user=UserFactory.create()).user

    response = signed_in(user).get(page(organization))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Audit log" in html
    for text in ("api_key.created", "api_key:11", "192.0.2.40", "req_ours_1", "team:12", "API key or system"):
        assert text in html
    assert "req_theirs" not in html
    assert html.index("req_ours_2") < html.index("req_ours_1")  # newest first


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_other_roles_get_403(organization: Organization, events: list[AuditEvent], role: str) -> None:
    user = MembershipFactory.create(organization=organization, role=role, user=UserFactory.create()).user

    response = signed_in(user).get(page(organization))

    assert response.status_code == 403
    assert "req_ours_1" not in response.content.decode()


def test_a_non_member_gets_404(organization: Organization, outsider: User, events: list[AuditEvent]) -> None:
    assert signed_in(outsider).get(page(organization)).status_code == 404


def test_signing_in_is_required(organization: Organization) -> None:
    response = Client().get(page(organization))

    assert response.status_code == 302
    assert "login" in response["Location"]


def test_the_filters_narrow_the_list(organization: Organization, owner: User, events: list[AuditEvent]) -> None:
    html = signed_in(owner).get(page(organization), {"action": "team"}).content.decode()

    assert "req_ours_2" in html
    assert "req_ours_1" not in html


def test_the_export_links_carry_the_filters(organization: Organization, owner: User, events: list[AuditEvent]) -> None:
    response = signed_in(owner).get(page(organization), {"action": "api_key", "since": "2026-01-01"})

    links = dict(response.context["exports"])
    assert set(links) == {"csv", "jsonl"}
    csv_link = urlsplit(links["csv"])
    assert csv_link.path == reverse("audit-events-export", args=[organization.slug])
    assert parse_qs(csv_link.query) == {"action": ["api_key"], "since": ["2026-01-01"], "format": ["csv"]}
    assert links["csv"].replace("&", "&amp;") in response.content.decode()


def test_an_export_link_works_with_the_console_session(
    organization: Organization, owner: User, events: list[AuditEvent]
) -> None:
    client = signed_in(owner)
    link = client.get(page(organization)).context["exports"]["jsonl"]

    response = client.get(link)

    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    assert "req_ours_1" in body
    assert "req_theirs" not in body


@pytest.mark.parametrize(
    "query", [{"actor": "bob"}, {"since": "soon"}, {"since": "2026-03-02", "until": "2026-03-01"}, {"before": "0"}]
)
def test_bad_filters_get_400_with_the_error_shown(
    organization: Organization, owner: User, events: list[AuditEvent], query: dict[str, str]
) -> None:
    response = signed_in(owner).get(page(organization), query)

    assert response.status_code == 400
    assert 'class="error"' in response.content.decode()


def test_older_events_come_a_page_at_a_time(
    organization: Organization, owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("audit.views.PAGE_SIZE", 2)
    made = [audit_event_record(action="test.page", organization=organization, request_id=f"req_{i}") for i in range(3)]
    client = signed_in(owner)

    first = client.get(page(organization), {"action": "test.page"})
    second = client.get(page(organization) + first.context["older"])

    assert [e.pk for e in first.context["events"]] == [made[2].pk, made[1].pk]
    assert [e.pk for e in second.context["events"]] == [made[0].pk]
    assert second.context["older"] is None
    assert "action=test.page" in first.context["older"]
