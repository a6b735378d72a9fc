"""Operators manage tenants in the admin: organizations, members and keys (by prefix only), every change audited."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.admin import LAST_OWNER
from accounts.models import APIKey, Membership, Organization, Role, User
from accounts.services import IssuedKey, api_key_revoke
from audit.models import AuditEvent
from tests.audit.test_admin import admin_form_data
from tests.factories import MembershipFactory, OrganizationFactory, TeamFactory, issue_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def issued(organization: Organization, owner: User) -> IssuedKey:
    return issue_key(organization, created_by=owner, name="production")


def column(html: str, name: str) -> list[str]:
    return re.findall(rf'<td class="field-{name}[^"]*">([^<]*)</td>', html)


def all_audit_text() -> str:
    return json.dumps([[e.metadata, e.before, e.after, e.target_id] for e in AuditEvent.objects.all()], default=str)


# --- access -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["admin:accounts_organization_changelist", "admin:accounts_apikey_changelist",
             "admin:accounts_membership_changelist"],
)  # fmt: skip
def test_a_non_staff_user_is_sent_to_the_admin_login(client: Client, owner: User, name: str) -> None:
    client.force_login(owner)

    response = client.get(reverse(name))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# --- organizations ------------------------------------------------------------------------------------


def test_the_organization_list_counts_members_and_active_keys(
    admin_client: Client, organization: Organization, owner: User, issued: IssuedKey
) -> None:
    api_key_revoke(api_key=issue_key(organization, created_by=owner).api_key, actor=owner)
    issue_key(organization, created_by=owner, expires_at=timezone.now() - timedelta(days=1))

    html = admin_client.get(
        reverse("admin:accounts_organization_changelist"), {"q": organization.slug}
    ).content.decode()

    assert '<td class="field-members">2</td>' in html
    assert '<td class="field-active_keys">1</td>' in html


def test_the_organization_list_searches_by_a_members_email(
    admin_client: Client, organization: Organization, owner: User
) -> None:
    other = OrganizationFactory.create()

    html = admin_client.get(reverse("admin:accounts_organization_changelist"), {"q": owner.email}).content.decode()

    assert organization.slug in html
    assert other.slug not in html


def test_the_organization_page_lists_members_and_keys_by_prefix(
    admin_client: Client, organization: Organization, owner: User, issued: IssuedKey
) -> None:
    html = admin_client.get(reverse("admin:accounts_organization_change", args=[organization.pk])).content.decode()

    assert owner.email in html
    assert issued.api_key.prefix in html
    assert "production" in html
    assert issued.api_key.digest not in html
    assert issued.secret not in html
    assert 'name="api_keys-0-name"' not in html  # read-only: keys are not edited here
    assert 'name="api_keys-MAX_NUM_FORMS" value="0"' in html  # nor added


def test_editing_an_organizations_rate_limit_is_audited(
    admin_client: Client, admin_user: User, organization: Organization, issued: IssuedKey
) -> None:
    Organization.objects.filter(pk=organization.pk).update(webhook_secret="whsec_do_not_leak")
    organization.refresh_from_db()
    data = admin_form_data(organization, admin_user, rpm_limit="120", _save="Save")

    response = admin_client.post(reverse("admin:accounts_organization_change", args=[organization.pk]), data)

    assert response.status_code == 302, response.content.decode()[:3000]
    organization.refresh_from_db()
    assert organization.rpm_limit == 120
    event = AuditEvent.objects.get(action="organization.updated")
    assert (event.actor_id, event.organization_id) == (admin_user.pk, organization.pk)
    assert (event.before, event.after) == ({"rpm_limit": None}, {"rpm_limit": 120})
    text = all_audit_text()
    assert issued.api_key.digest not in text
    assert "whsec_do_not_leak" not in text


def test_changing_a_role_in_the_member_inline_goes_through_the_service(
    admin_client: Client, admin_user: User, organization: Organization, member: User
) -> None:
    membership = Membership.objects.get(organization=organization, user=member)
    data = admin_form_data(organization, admin_user, _save="Save")
    index = next(k.split("-")[1] for k, v in data.items() if k.endswith("-id") and v == membership.pk)
    data[f"memberships-{index}-role"] = Role.ADMIN

    response = admin_client.post(reverse("admin:accounts_organization_change", args=[organization.pk]), data)

    assert response.status_code == 302, response.content.decode()[:3000]
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN
    event = AuditEvent.objects.get(action="membership.updated")
    assert (event.before, event.after, event.actor_id) == ({"role": "member"}, {"role": "admin"}, admin_user.pk)


def test_the_member_inline_keeps_an_owner(
    admin_client: Client, admin_user: User, organization: Organization, owner: User
) -> None:
    membership = Membership.objects.get(organization=organization, user=owner)
    data = admin_form_data(organization, admin_user, _save="Save")
    index = next(k.split("-")[1] for k, v in data.items() if k.endswith("-id") and v == membership.pk)
    data[f"memberships-{index}-role"] = Role.VIEWER

    response = admin_client.post(reverse("admin:accounts_organization_change", args=[organization.pk]), data)

    assert response.status_code == 200
    assert LAST_OWNER in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == Role.OWNER
    assert not AuditEvent.objects.filter(action__startswith="membership.").exists()


# --- memberships ------------------------------------------------------------------------------------------


def test_the_membership_admin_changes_a_role_through_the_service(
    admin_client: Client, admin_user: User, organization: Organization, member: User
) -> None:
    membership = Membership.objects.get(organization=organization, user=member)

    response = admin_client.post(
        reverse("admin:accounts_membership_change", args=[membership.pk]), {"role": Role.VIEWER, "_save": "Save"}
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    membership.refresh_from_db()
    assert membership.role == Role.VIEWER
    assert AuditEvent.objects.get(action="membership.updated").after == {"role": "viewer"}


def test_adding_a_member_in_the_admin_goes_through_the_service(
    admin_client: Client, admin_user: User, organization: Organization
) -> None:
    newcomer = User.objects.create_user("newcomer@example.com", "newcomer password 123")

    response = admin_client.post(
        reverse("admin:accounts_membership_add"),
        {"organization": organization.pk, "user": newcomer.pk, "role": Role.VIEWER, "_save": "Save"},
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    membership = Membership.objects.get(organization=organization, user=newcomer)
    assert membership.role == Role.VIEWER
    event = AuditEvent.objects.get(action="membership.created")
    assert (event.target_id, event.actor_id, event.organization_id) == (
        str(membership.pk), admin_user.pk, organization.pk,
    )  # fmt: skip


def test_a_team_of_another_organization_is_refused(
    admin_client: Client, organization: Organization, member: User
) -> None:
    membership = Membership.objects.get(organization=organization, user=member)
    elsewhere = TeamFactory.create(organization=OrganizationFactory.create())

    response = admin_client.post(
        reverse("admin:accounts_membership_change", args=[membership.pk]),
        {"role": Role.MEMBER, "team": elsewhere.pk, "_save": "Save"},
    )

    assert response.status_code == 200
    assert "This team belongs to another organization." in response.content.decode()
    membership.refresh_from_db()
    assert membership.team_id is None


def test_the_last_owner_cannot_be_removed_in_the_admin(
    admin_client: Client, organization: Organization, owner: User
) -> None:
    membership = Membership.objects.get(organization=organization, user=owner)

    response = admin_client.post(reverse("admin:accounts_membership_delete", args=[membership.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert Membership.objects.filter(pk=membership.pk).exists()


def test_removing_a_member_in_the_admin_is_audited(
    admin_client: Client, organization: Organization, member: User
) -> None:
    membership = Membership.objects.get(organization=organization, user=member)

    response = admin_client.post(reverse("admin:accounts_membership_delete", args=[membership.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert AuditEvent.objects.get(action="membership.removed").target_id == str(membership.pk)


def test_the_membership_list_filters_by_role(admin_client: Client, organization: Organization) -> None:
    viewer = MembershipFactory.create(organization=organization, role=Role.VIEWER).user

    html = admin_client.get(reverse("admin:accounts_membership_changelist"), {"role__exact": "viewer"}).content.decode()

    assert viewer.email in html
    assert html.count('class="field-role"') == 1


# --- API keys ---------------------------------------------------------------------------------------------


def test_the_key_list_shows_prefix_status_and_last_use_never_the_digest(
    admin_client: Client, organization: Organization, owner: User, issued: IssuedKey
) -> None:
    revoked = issue_key(organization, created_by=owner, name="old")
    api_key_revoke(api_key=revoked.api_key, actor=owner)
    APIKey.objects.filter(pk=issued.api_key.pk).update(last_used_at=timezone.now())

    html = admin_client.get(reverse("admin:accounts_apikey_changelist")).content.decode()

    assert issued.api_key.prefix in html
    assert sorted(column(html, "status")) == ["active", "revoked"]
    last_used = dict(zip(column(html, "name"), column(html, "last_used_at"), strict=True))
    assert last_used["old"] == "-"
    assert last_used["production"] != "-"
    for secret_part in (issued.api_key.digest, issued.secret, revoked.api_key.digest, revoked.secret):
        assert secret_part not in html


@pytest.mark.parametrize(("status", "shown"), [("active", "production"), ("revoked", "old"), ("expired", "stale")])
def test_the_key_list_filters_by_status(
    admin_client: Client, organization: Organization, owner: User, issued: IssuedKey, status: str, shown: str
) -> None:
    api_key_revoke(api_key=issue_key(organization, created_by=owner, name="old").api_key, actor=owner)
    issue_key(organization, created_by=owner, name="stale", expires_at=timezone.now() - timedelta(hours=1))

    html = admin_client.get(reverse("admin:accounts_apikey_changelist"), {"status": status}).content.decode()

    assert column(html, "name") == [shown]


def test_the_key_page_shows_no_digest_and_no_way_to_set_a_secret(admin_client: Client, issued: IssuedKey) -> None:
    html = admin_client.get(reverse("admin:accounts_apikey_change", args=[issued.api_key.pk])).content.decode()

    assert issued.api_key.prefix in html
    assert issued.api_key.digest not in html
    assert 'name="digest"' not in html
    assert 'name="prefix"' not in html


def test_keys_cannot_be_added_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:accounts_apikey_add")).status_code == 403
    assert admin_client.post(
        reverse("admin:accounts_apikey_add"), {"name": "mine", "digest": "0" * 64}
    ).status_code == (403)


def test_revoking_keys_by_action_goes_through_the_service(
    admin_client: Client, admin_user: User, organization: Organization, owner: User, issued: IssuedKey
) -> None:
    already = issue_key(organization, created_by=owner, name="old").api_key
    api_key_revoke(api_key=already, actor=owner)

    response = admin_client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [issued.api_key.pk, already.pk]},
        follow=True,
    )

    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is not None
    event = AuditEvent.objects.get(action="api_key.revoked", target_id=str(issued.api_key.pk))
    assert (event.actor_id, event.organization_id) == (admin_user.pk, organization.pk)
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 2  # the earlier revoke and this one
    assert "Revoked 1 API key(s) (1 already revoked)." in response.content.decode()
    text = all_audit_text()
    assert issued.api_key.digest not in text
    assert issued.secret not in text


def test_a_revoked_key_is_read_only(admin_client: Client, owner: User, issued: IssuedKey) -> None:
    api_key_revoke(api_key=issued.api_key, actor=owner)

    page = admin_client.get(reverse("admin:accounts_apikey_change", args=[issued.api_key.pk]))
    post = admin_client.post(
        reverse("admin:accounts_apikey_change", args=[issued.api_key.pk]), {"rpm_limit": "5", "_save": "Save"}
    )

    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert post.status_code == 403
    issued.api_key.refresh_from_db()
    assert issued.api_key.rpm_limit is None


def test_adding_an_existing_member_again_in_the_inline_is_refused(
    admin_client: Client, admin_user: User, organization: Organization, member: User
) -> None:
    data = admin_form_data(organization, admin_user, _save="Save")
    total = int(data["memberships-TOTAL_FORMS"])
    data.update({
        "memberships-TOTAL_FORMS": str(total + 1), f"memberships-{total}-user": member.pk,
        f"memberships-{total}-role": Role.ADMIN,
    })  # fmt: skip

    response = admin_client.post(reverse("admin:accounts_organization_change", args=[organization.pk]), data)

    assert response.status_code == 200
    assert Membership.objects.filter(organization=organization, user=member).count() == 1
    assert not AuditEvent.objects.filter(action="membership.created").exists()
