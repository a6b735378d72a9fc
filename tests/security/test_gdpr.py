"""GDPR: the organization export (everything, no secrets), a person's own export, and erasure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.messages.storage.fallback import FallbackStorage
from django.db import connections, models
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import gdpr
from accounts.gdpr_admin import erase_users
from accounts.models import APIKey, Invitation, KeyScope, Membership, Organization, Role, Team, User
from audit.chain import chain_verify
from audit.models import AuditEvent
from audit.services import audit_event_record
from billing.models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    BudgetScope,
    Notification,
    RequestLog,
    UsageRecord,
    UsageRollup,
)
from providers.models import Provider, ProviderCredential
from routing.models import Feedback, TrainedRouter
from tests.conftest import Tenant
from tests.factories import MembershipFactory, UserFactory, issue_key

from .conftest import PASSWORD

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db

WEBHOOK_SECRET = "whsec-do-not-export-0123456789"
FERNET_TOKEN = "gAAAAAB-encrypted-provider-key-do-not-export"
INVITATION_DIGEST = "d" * 64


@dataclass
class Owned:
    """One row of every kind an organization owns, and the secrets none of them may leak."""

    tenant: Tenant
    key_secret: str
    key_digest: str
    secrets: list[str]


@pytest.fixture
def owned(tenant: Tenant, catalog: None) -> Owned:
    org, owner = tenant.organization, tenant.owner
    Organization.objects.filter(pk=org.pk).update(webhook_secret=WEBHOOK_SECRET, webhook_url="https://hooks.example")
    team = Team.objects.create(organization=org, name="Platform")
    issued = issue_key(org, created_by=owner, team=team)
    Invitation.objects.create(
        organization=org, email="invitee@example.com", role=Role.MEMBER, digest=INVITATION_DIGEST,
        invited_by=owner, expires_at=timezone.now() + timedelta(days=7),
    )  # fmt: skip
    ProviderCredential.objects.create(
        organization=org, provider=Provider.objects.get(slug="openai"), encrypted_key=FERNET_TOKEN,
        last_four="wxyz", created_by=owner,
    )  # fmt: skip
    budget = Budget.objects.create(
        organization=org, name="monthly", scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.MONTHLY,
        limit_usd=Decimal("100"),
    )  # fmt: skip
    BudgetAlert.objects.create(
        budget=budget, period_start=datetime(2026, 3, 1, tzinfo=UTC), threshold=80, spent_usd=Decimal("80.5")
    )
    Notification.objects.create(organization=org, kind="budget_alert", title="80% of monthly")
    Feedback.objects.create(organization=org, api_key=issued.api_key, request_id="req_fb", rating=4)
    TrainedRouter.objects.create(organization=org, version="v1", weights=b"\x00secret-weights\x00")
    usage = UsageRecord.objects.create(
        request_id="req_1", organization=org, api_key=issued.api_key, team=team, user=owner, model="gpt-4o-mini",
        provider="openai", input_tokens=10, output_tokens=5, cost_usd=Decimal("0.0001250000"), status="ok",
        http_status=200, created_at=timezone.now(),
    )  # fmt: skip
    RequestLog.objects.create(
        usage=usage, organization=org, created_at=usage.created_at, request_body={"messages": []}, response_body=None
    )
    UsageRollup.objects.create(
        day=date(2026, 3, 10), organization=org, team_id=team.pk, api_key_id=issued.api_key.pk, model="gpt-4o-mini",
        provider="openai", requests=1, cost_usd=Decimal("0.0001250000"),
    )  # fmt: skip
    audit_event_record(action="test.event", organization=org, actor=owner, target_type="team", target_id=team.pk)
    return Owned(
        tenant=tenant,
        key_secret=issued.secret,
        key_digest=issued.api_key.digest,
        secrets=[WEBHOOK_SECRET, FERNET_TOKEN, INVITATION_DIGEST, issued.secret, issued.api_key.digest,
                 "secret-weights", PASSWORD],
    )  # fmt: skip


def export(client: APIClient, organization: Organization) -> tuple[int, bytes]:
    response = client.get(reverse("org-export", args=[organization.slug]))
    return response.status_code, response.getvalue()


def owner_client(tenant: Tenant) -> APIClient:
    client = APIClient()
    client.force_authenticate(tenant.owner)
    return client


# --- organization export ------------------------------------------------------------------------


def test_the_owner_exports_one_row_of_everything(owned: Owned) -> None:
    status, body = export(owner_client(owned.tenant), owned.tenant.organization)

    assert status == 200
    document = json.loads(body)
    assert document["object"] == "organization.export"
    assert document["organization"]["slug"] == owned.tenant.organization.slug
    assert document["organization"]["webhook_url"] == "https://hooks.example"
    assert document["organization"]["webhook_signing_enabled"] is True
    for section in gdpr.SECTIONS:
        assert len(document[section.name]) >= 1, section.name
    assert {m["user_email"] for m in document["memberships"]} == {owned.tenant.owner.email, owned.tenant.member.email}
    assert document["provider_credentials"][0]["last_four"] == "wxyz"
    assert document["provider_credentials"][0]["provider_slug"] == "openai"
    assert document["usage_records"][0]["cost_usd"] == "0.0001250000"
    assert document["api_keys"][0]["prefix"] == owned.key_secret[: len(document["api_keys"][0]["prefix"])]
    assert "test.event" in {e["action"] for e in document["audit_events"]}


def test_the_export_holds_no_secret(owned: Owned) -> None:
    _, body = export(owner_client(owned.tenant), owned.tenant.organization)

    text = body.decode()
    for secret in owned.secrets:
        assert secret not in text
    document = json.loads(body)
    for name in ("webhook_secret", "digest", "encrypted_key", "weights", "password"):
        assert name not in document["organization"]
        for section in gdpr.SECTIONS:
            for row in document[section.name]:
                assert name not in row, (section.name, name)


def organization_owned_models() -> set[type[models.Model]]:
    owned_models = set()
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if field.is_relation and field.related_model is Organization:
                owned_models.add(model)
    return owned_models


def test_every_model_an_organization_owns_is_exported() -> None:
    exported = {section.model for section in gdpr.SECTIONS}

    missing = {m._meta.label for m in organization_owned_models() - exported}

    assert not missing, f"add an ExportSection to accounts/gdpr.py for: {sorted(missing)}"
    assert BudgetAlert in exported  # owned through its budget


def test_no_exported_field_is_named_like_a_secret() -> None:
    for section in gdpr.SECTIONS:
        for column in section.columns():
            assert not gdpr.SECRET_FIELD.search(column), f"{section.name}.{column}: omit it or rename it"
    organization_columns = [f.attname for f in Organization._meta.concrete_fields]
    flagged = {c for c in organization_columns if gdpr.SECRET_FIELD.search(c)}
    assert flagged <= gdpr.ORGANIZATION_OMIT


def test_the_export_pages_through_large_sections(owned: Owned, monkeypatch: pytest.MonkeyPatch) -> None:
    org, owner = owned.tenant.organization, owned.tenant.owner
    monkeypatch.setattr(gdpr, "PAGE_SIZE", 2)
    for number in range(4):
        Team.objects.create(organization=org, name=f"Team {number}")

    _, body = export(owner_client(owned.tenant), org)

    names = [t["name"] for t in json.loads(body)["teams"]]
    assert sorted(names) == sorted(["Platform", *(f"Team {n}" for n in range(4))])
    assert owner.pk  # the cast is unchanged


def test_the_export_shows_none_of_another_organizations_rows(owned: Owned, outsider: User) -> None:
    theirs = outsider.memberships.get().organization
    Team.objects.create(organization=theirs, name="Their team")
    issue_key(theirs, created_by=outsider, name="their key")

    _, body = export(owner_client(owned.tenant), owned.tenant.organization)

    assert b"Their team" not in body
    assert b"their key" not in body
    assert outsider.email.encode() not in body


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_only_owners_export(owned: Owned, role: str) -> None:
    user = MembershipFactory.create(organization=owned.tenant.organization, role=role).user
    client = APIClient()
    client.force_authenticate(user)

    response = client.get(reverse("org-export", args=[owned.tenant.organization.slug]))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_an_outsider_gets_404(owned: Owned, outsider: User) -> None:
    client = APIClient()
    client.force_authenticate(outsider)

    response = client.get(reverse("org-export", args=[owned.tenant.organization.slug]))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_admin_key_cannot_export(owned: Owned) -> None:
    key = issue_key(owned.tenant.organization, created_by=owned.tenant.owner, scopes=[KeyScope.ADMIN]).secret
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    response = client.get(reverse("org-export", args=[owned.tenant.organization.slug]))

    assert response.status_code == 403


async def in_thread(function: Any) -> Any:
    from asgiref.sync import sync_to_async

    return await sync_to_async(function)()


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_export_streams(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gdpr, "PAGE_SIZE", 2)

    def setup() -> None:
        for number in range(5):
            Team.objects.create(organization=tenant.organization, name=f"Team {number}")

    await in_thread(setup)
    client = AsyncClient()
    await client.aforce_login(tenant.owner)

    response = await client.get(reverse("org-export", args=[tenant.organization.slug]))

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response.is_async
    chunks = [chunk async for chunk in response.streaming_content]  # type: ignore[union-attr]
    await in_thread(connections.close_all)
    assert len(json.loads(b"".join(chunks))["teams"]) == 5
    assert len(chunks) > 2 * len(gdpr.SECTIONS)  # the teams came in pages


# --- a person's own export ----------------------------------------------------------------------


def test_a_user_exports_their_own_data(owned: Owned) -> None:
    response = owner_client(owned.tenant).get(reverse("me-export"))

    assert response.status_code == 200
    data = response.json()
    assert data["profile"]["email"] == owned.tenant.owner.email
    assert [m["organization_slug"] for m in data["memberships"]] == [owned.tenant.organization.slug]
    assert len(data["api_keys"]) == 1
    assert "digest" not in data["api_keys"][0]
    assert owned.key_digest not in response.content.decode()


def test_an_api_key_cannot_use_the_me_endpoints(owned: Owned) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {owned.key_secret}")

    assert client.get(reverse("me-export")).status_code == 401
    assert client.post(reverse("me-erase"), {"confirm": owned.tenant.owner.email}, format="json").status_code == 401


# --- erasure ------------------------------------------------------------------------------------


def erase(client: APIClient, confirm: str) -> Response:
    return client.post(reverse("me-erase"), {"confirm": confirm}, format="json")


def signed_in(user: User) -> tuple[APIClient, dict[str, str]]:
    user.set_password(PASSWORD)
    user.save()
    client = APIClient()
    tokens = client.post(reverse("token-obtain"), {"email": user.email, "password": PASSWORD}, format="json").json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    return client, tokens


def test_erasure_anonymises_and_keeps_the_ledger_and_the_audit_chain(owned: Owned) -> None:
    member = owned.tenant.member
    key = issue_key(owned.tenant.organization, created_by=member, name="member key")
    UsageRecord.objects.create(
        request_id="req_member", organization=owned.tenant.organization, api_key=key.api_key, user=member,
        model="gpt-4o-mini", provider="openai", status="ok", http_status=200, created_at=timezone.now(),
    )  # fmt: skip
    old_email = member.email
    client, _ = signed_in(member)
    usage_before = list(UsageRecord.objects.order_by("pk").values())
    audit_before = list(AuditEvent.objects.order_by("pk").values())

    response = erase(client, f"  {old_email.upper()} ")

    assert response.status_code == 200, response.content
    assert response.json() == {"object": "user.erased", "id": member.pk}
    member.refresh_from_db()
    assert member.email == f"erased-{member.pk}@erased.invalid"
    assert member.name == ""
    assert not member.has_usable_password()
    assert not member.is_active
    assert not Membership.objects.filter(user=member).exists()
    assert APIKey.objects.get(pk=key.api_key.pk).created_by_id == member.pk
    assert list(UsageRecord.objects.order_by("pk").values()) == usage_before
    assert list(AuditEvent.objects.order_by("pk").values())[: len(audit_before)] == audit_before
    erased_events = AuditEvent.objects.filter(action="user.erased")
    assert [(e.organization_id, e.target_id, e.actor_id) for e in erased_events] == [
        (owned.tenant.organization.pk, str(member.pk), member.pk)
    ]
    assert old_email not in json.dumps(list(AuditEvent.objects.values("metadata", "before", "after")), default=str)
    assert chain_verify().intact


def test_an_erased_user_cannot_sign_in_or_use_their_tokens(owned: Owned) -> None:
    member = owned.tenant.member
    old_email = member.email
    client, tokens = signed_in(member)
    assert erase(client, old_email).status_code == 200

    api = APIClient()
    assert (
        api.post(reverse("token-obtain"), {"email": old_email, "password": PASSWORD}, format="json").status_code == 401
    )
    erased_email = gdpr.erased_email(member.pk)
    assert (
        api.post(reverse("token-obtain"), {"email": erased_email, "password": PASSWORD}, format="json").status_code
        == 401
    )
    assert api.post(reverse("token-refresh"), {"refresh": tokens["refresh"]}, format="json").status_code == 401
    assert client.get(reverse("org-list")).status_code == 401
    assert not Client().login(username=old_email, password=PASSWORD)


def test_erasure_ends_the_console_session(owned: Owned) -> None:
    member = owned.tenant.member
    console = Client()
    console.force_login(member)
    assert console.get(reverse("console-home")).status_code == 200

    gdpr.user_erase(user=member, actor=member)

    assert console.get(reverse("console-home")).status_code == 302


def test_erasure_needs_the_users_own_email(owned: Owned) -> None:
    member = owned.tenant.member
    client = APIClient()
    client.force_authenticate(member)

    response = erase(client, owned.tenant.owner.email)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "confirm"
    member.refresh_from_db()
    assert member.is_active
    assert Membership.objects.filter(user=member).exists()
    assert not AuditEvent.objects.filter(action="user.erased").exists()


def test_the_last_owner_of_an_organization_with_members_cannot_be_erased(owned: Owned) -> None:
    owner = owned.tenant.owner
    client = APIClient()
    client.force_authenticate(owner)

    response = erase(client, owner.email)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "last_owner"
    assert owned.tenant.organization.slug in error["message"]
    owner.refresh_from_db()
    assert owner.is_active
    assert owner.email != gdpr.erased_email(owner.pk)
    assert Membership.objects.filter(user=owner).count() == 1
    assert not AuditEvent.objects.filter(action="user.erased").exists()


def test_an_owner_with_a_co_owner_can_be_erased(owned: Owned) -> None:
    Membership.objects.filter(user=owned.tenant.member).update(role=Role.OWNER)

    gdpr.user_erase(user=owned.tenant.owner, actor=None)

    assert list(Membership.objects.filter(organization=owned.tenant.organization).values_list("role", flat=True)) == [
        Role.OWNER
    ]


def test_a_sole_member_leaves_the_organization_behind(tenant: Tenant) -> None:
    alone = UserFactory.create()
    organization = MembershipFactory.create(user=alone, role=Role.OWNER).organization

    erased = gdpr.user_erase(user=alone, actor=None)

    assert erased.organizations_left == [organization.pk]
    assert Organization.objects.filter(pk=organization.pk).exists()
    assert not Membership.objects.filter(organization=organization).exists()


def test_erasure_anonymises_invitations_and_the_alert_address(tenant: Tenant) -> None:
    member = tenant.member
    Organization.objects.filter(pk=tenant.organization.pk).update(alert_email=member.email.upper())
    pending = Invitation.objects.create(
        organization=tenant.organization, email=member.email, role=Role.ADMIN, digest="e" * 64,
        expires_at=timezone.now() + timedelta(days=1),
    )  # fmt: skip

    gdpr.user_erase(user=member, actor=None)

    pending.refresh_from_db()
    assert pending.email == gdpr.erased_email(member.pk)
    assert pending.status == "revoked"
    tenant.organization.refresh_from_db()
    assert tenant.organization.alert_email == ""


def test_staff_erase_users_from_the_admin(tenant: Tenant) -> None:
    staff = User.objects.create_user("ops@example.com", PASSWORD, is_staff=True, is_superuser=True)
    request = RequestFactory().post("/admin/accounts/user/")
    request.user = staff
    request.session = {}  # type: ignore[assignment]
    request._messages = FallbackStorage(request)  # type: ignore[attr-defined]
    modeladmin = admin.site._registry[User]

    erase_users(modeladmin, request, User.objects.filter(pk__in=[tenant.member.pk, tenant.owner.pk, staff.pk]))

    tenant.member.refresh_from_db()
    tenant.owner.refresh_from_db()
    staff.refresh_from_db()
    assert not tenant.member.is_active
    assert tenant.owner.is_active  # the last owner: refused, with a message
    assert staff.is_active  # not themselves
    messages = [str(m) for m in request._messages]  # type: ignore[attr-defined]
    assert any("last owner" in m for m in messages)
    assert any("Erased 1 user" in m for m in messages)
    assert AuditEvent.objects.get(action="user.erased").actor_id == staff.pk


def test_the_user_admin_offers_the_erase_action_through_the_changelist(tenant: Tenant) -> None:
    staff = User.objects.create_user("ops2@example.com", PASSWORD, is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)

    response = client.post(
        "/admin/accounts/user/",
        {"action": "erase_users", "_selected_action": [tenant.member.pk], "index": 0},
        follow=True,
    )

    assert response.status_code == 200
    tenant.member.refresh_from_db()
    assert not tenant.member.is_active
