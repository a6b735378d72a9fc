"""The onboarding wizard: organization, invitations, the first key (shown once), snippets and a test request."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Invitation, Membership, Organization, Role, User
from audit.models import AuditEvent
from billing.models import BudgetPeriod, BudgetScope
from billing.services import budget_create
from console.onboarding_trial import first_request_send
from tests.conftest import FakeUpstream
from tests.factories import OrganizationFactory, UserFactory, issue_key

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
STEP_NAMES = (
    "console-onboarding-invite",
    "console-onboarding-key",
    "console-onboarding-snippets",
    "console-onboarding-test",
)


def verified(user: User) -> User:
    user.email_verified_at = timezone.now()
    user.save(update_fields=["email_verified_at"])
    return user


def step(name: str, organization: Organization) -> str:
    return reverse(name, args=[organization.slug])


def secret_in(page: str) -> str:
    found = re.search(r'<code id="new-key-secret">([^<]+)</code>', page)
    assert found, page
    return found.group(1)


# --- home and step 1 ------------------------------------------------------------------------------


def test_a_user_without_an_organization_is_sent_to_the_wizard(client: Client) -> None:
    client.force_login(UserFactory.create())

    response = client.get(reverse("console-home"))

    assert response.status_code == 302
    assert response["Location"] == reverse("console-onboarding")


def test_home_links_each_organization_to_its_dashboard_and_to_the_wizard(
    owner_client: Client, organization: Organization
) -> None:
    page = owner_client.get(reverse("console-home")).content.decode()

    assert f'href="{reverse("console-dashboard", args=[organization.slug])}"' in page
    assert f'href="{reverse("console-onboarding")}"' in page
    assert "Create another organization" in page


def test_the_wizard_starts_with_the_organization_form(client: Client) -> None:
    client.force_login(UserFactory.create())

    page = client.get(reverse("console-onboarding")).content.decode()

    assert 'id="org-form"' in page
    assert '<li class="current" data-step="organization"' in page
    assert '<option value="Europe/Paris">' in page


def test_the_wizard_needs_a_signed_in_user(client: Client) -> None:
    response = client.get(reverse("console-onboarding"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console-login"))


def test_step_one_creates_the_organization_with_the_user_as_owner(client: Client) -> None:
    user = UserFactory.create()
    client.force_login(user)

    response = client.post(reverse("console-onboarding"), {"name": "Acme Rockets", "timezone": "Europe/Paris"})

    organization = Organization.objects.get(name="Acme Rockets")
    assert response.status_code == 302
    assert response["Location"] == step("console-onboarding-invite", organization)
    assert organization.slug == "acme-rockets"
    assert organization.timezone == "Europe/Paris"
    assert Membership.objects.get(organization=organization).user == user
    assert Membership.objects.get(organization=organization).role == Role.OWNER


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "", "timezone": "UTC"}, b"This field is required."),
        ({"name": "Acme", "timezone": "Mars/Olympus"}, b"Select a valid choice."),
        ({"name": "x" * 201, "timezone": "UTC"}, b"Ensure this value has at most 200 characters"),
    ],
)
def test_step_one_refuses_bad_input(client: Client, data: dict[str, str], message: bytes) -> None:
    client.force_login(UserFactory.create())

    response = client.post(reverse("console-onboarding"), data)

    assert response.status_code == 400
    assert message in response.content
    assert not Organization.objects.filter(name=data["name"]).exists()


@pytest.mark.parametrize("name", ["Signup", "Onboarding", "Password reset", "Verify email", "Invitations", "Login"])
def test_no_organization_takes_a_console_path_as_its_slug(client: Client, name: str) -> None:
    client.force_login(UserFactory.create())

    client.post(reverse("console-onboarding"), {"name": name, "timezone": "UTC"})

    assert Organization.objects.get(name=name).slug == f"{name.lower().replace(' ', '-')}-2"


# --- step 2: invitations --------------------------------------------------------------------------


def test_an_unverified_owner_is_asked_to_verify_before_inviting(
    owner: User, owner_client: Client, organization: Organization
) -> None:
    owner.email_verified_at = None
    owner.save(update_fields=["email_verified_at"])
    url = step("console-onboarding-invite", organization)

    page = owner_client.get(url).content.decode()
    response = owner_client.post(url, {"emails": "ada@example.com", "role": Role.MEMBER})

    assert "Verify your email first" in page
    assert 'id="invite-form"' not in page
    assert f'action="{reverse("console-verify-email-resend")}"' in page
    assert 'id="invite-skip"' in page
    assert response.status_code == 403
    assert not Invitation.objects.filter(organization=organization).exists()


def test_a_verified_owner_invites_several_people(
    owner: User,
    owner_client: Client,
    organization: Organization,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    verified(owner)

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(
            step("console-onboarding-invite", organization),
            {"emails": "ada@example.com\ngrace@example.com, ADA@example.com", "role": Role.ADMIN},
        )

    assert response.status_code == 302
    assert response["Location"] == step("console-onboarding-key", organization)
    invitations = Invitation.objects.filter(organization=organization).order_by("email")
    assert [(i.email, i.role) for i in invitations] == [("ada@example.com", "admin"), ("grace@example.com", "admin")]
    assert sorted(message.to[0] for message in mail.outbox) == ["ada@example.com", "grace@example.com"]


def test_a_bad_address_is_named_and_nothing_is_sent(
    owner: User, owner_client: Client, organization: Organization
) -> None:
    verified(owner)

    response = owner_client.post(
        step("console-onboarding-invite", organization), {"emails": "ada@example.com\nnot-an-email", "role": "member"}
    )

    assert response.status_code == 400
    assert b"Not an email address: not-an-email." in response.content
    assert not Invitation.objects.filter(organization=organization).exists()


def test_the_apis_refusal_is_shown_per_address(
    owner: User, member: User, owner_client: Client, organization: Organization
) -> None:
    verified(owner)

    response = owner_client.post(
        step("console-onboarding-invite", organization),
        {"emails": f"new@example.com\n{member.email}", "role": "member"},
    )

    assert response.status_code == 400
    assert f"{member.email}: This person is already a member of the organization.".encode() in response.content
    assert b"Sent to new@example.com." in response.content
    assert list(Invitation.objects.filter(organization=organization).values_list("email", flat=True)) == [
        "new@example.com"
    ]


def test_a_member_cannot_invite(member: User, member_client: Client, organization: Organization) -> None:
    verified(member)
    url = step("console-onboarding-invite", organization)

    page = member_client.get(url).content.decode()
    response = member_client.post(url, {"emails": "ada@example.com", "role": "member"})

    assert 'id="invite-not-allowed"' in page
    assert 'id="invite-form"' not in page
    assert response.status_code == 403
    assert not Invitation.objects.filter(organization=organization).exists()


def test_an_admin_may_not_offer_the_owner_role(owner_client: Client, organization: Organization, owner: User) -> None:
    admin = UserFactory.create(email_verified_at=timezone.now())
    Membership.objects.create(user=admin, organization=organization, role=Role.ADMIN)
    client = Client()
    client.force_login(admin)

    page = client.get(step("console-onboarding-invite", organization)).content.decode()
    response = client.post(
        step("console-onboarding-invite", organization), {"emails": "x@example.com", "role": "owner"}
    )

    assert '<option value="owner"' not in page
    assert response.status_code == 400
    assert not Invitation.objects.exists()


# --- step 3 and 4: the key and the snippets -------------------------------------------------------


def test_the_key_is_shown_once_with_snippets_and_only_its_id_is_kept(
    owner: User, owner_client: Client, organization: Organization
) -> None:
    response = owner_client.post(step("console-onboarding-key", organization), {"name": "Backend"})

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    page = response.content.decode()
    secret = secret_in(page)
    key = APIKey.objects.get(organization=organization, name="Backend")
    assert secret.startswith("mm_")
    assert key.prefix in secret
    assert key.created_by == owner
    assert 'data-copy="#new-key-secret"' in page
    for snippet in ("curl", "python", "js"):
        assert f'<code id="snippet-{snippet}">' in page
        assert f'data-copy="#snippet-{snippet}"' in page
    assert page.count(secret) == 4  # the reveal and the three snippets
    assert "http://testserver/v1" in page
    assert owner_client.session["onboarding_key_ids"] == {str(organization.pk): key.pk}
    assert secret not in json.dumps(dict(owner_client.session))


def test_the_secret_is_not_shown_again(owner_client: Client, organization: Organization) -> None:
    secret = secret_in(
        owner_client.post(step("console-onboarding-key", organization), {"name": "Backend"}).content.decode()
    )

    for name in STEP_NAMES:
        page = owner_client.get(step(name, organization)).content.decode()
        assert secret not in page, name
        assert 'id="new-key-secret"' not in page, name


def test_later_snippets_read_the_key_from_the_environment(
    owner_client: Client, organization: Organization, settings: SettingsWrapper
) -> None:
    settings.MUXER_PUBLIC_BASE_URL = "https://muxer.example.com"

    page = owner_client.get(step("console-onboarding-snippets", organization)).content.decode()

    assert "Bearer $MODELMUXER_API_KEY" in page
    assert "os.environ[&quot;MODELMUXER_API_KEY&quot;]" in page
    assert "apiKey: process.env.MODELMUXER_API_KEY" in page
    assert "https://muxer.example.com/v1/chat/completions" in page
    assert "base_url=&quot;https://muxer.example.com/v1&quot;" in page


def test_a_blank_key_name_is_refused(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(step("console-onboarding-key", organization), {"name": ""})

    assert response.status_code == 400
    assert b"This field is required." in response.content
    assert not APIKey.objects.filter(organization=organization).exists()


def test_a_viewer_cannot_create_a_key_or_send_a_test_request(viewer_client: Client, organization: Organization) -> None:
    key_page = viewer_client.get(step("console-onboarding-key", organization)).content.decode()
    test_page = viewer_client.get(step("console-onboarding-test", organization)).content.decode()

    assert 'id="key-form"' not in key_page
    assert 'id="key-not-allowed"' in key_page
    assert 'id="test-request-form"' not in test_page
    assert viewer_client.post(step("console-onboarding-key", organization), {"name": "x"}).status_code == 403
    assert viewer_client.post(step("console-onboarding-test", organization), {"text": "hi"}).status_code == 403
    assert not APIKey.objects.filter(organization=organization).exists()


@pytest.mark.parametrize("name", STEP_NAMES)
def test_an_outsider_gets_404(outsider_client: Client, organization: Organization, name: str) -> None:
    assert outsider_client.get(step(name, organization)).status_code == 404
    assert outsider_client.post(step(name, organization), {"name": "x", "text": "x"}).status_code in (404, 405)


def test_the_step_indicator_marks_done_and_current(owner_client: Client, organization: Organization) -> None:
    page = owner_client.get(step("console-onboarding-key", organization)).content.decode()

    assert '<ul class="steps"' in page
    assert '<li class="done" data-step="organization"' in page
    assert '<li class="done" data-step="invite"' in page
    assert '<li class="current" data-step="key"' in page
    assert '<li class="" data-step="test"' in page


# --- step 5: the test request ---------------------------------------------------------------------


def test_the_test_request_needs_the_wizards_key(owner_client: Client, organization: Organization) -> None:
    page = owner_client.get(step("console-onboarding-test", organization)).content.decode()
    response = owner_client.post(step("console-onboarding-test", organization), {"text": "hi"})

    assert 'id="test-no-key"' in page
    assert response.status_code == 400
    assert b"Create an API key first" in response.content


def test_a_key_of_another_organization_is_refused_by_the_gateway(organization: Organization) -> None:
    foreign = issue_key(OrganizationFactory.create()).api_key

    reply = first_request_send(organization_id=organization.pk, key_id=foreign.pk, text="hi")

    assert not reply.ok
    assert reply.status == 401
    assert reply.error


@pytest.mark.django_db(transaction=True)
def test_the_wizard_end_to_end(client: Client, catalog: None, upstream: FakeUpstream) -> None:
    email = f"founder-{uuid.uuid4().hex[:8]}@example.com"
    signed_up = client.post(
        reverse("console-signup"), {"email": email, "name": "Founder", "password": "a sturdy passphrase 42"}
    )
    assert signed_up["Location"] == reverse("console-onboarding")
    created = client.post(reverse("console-onboarding"), {"name": "Rocket Labs", "timezone": "UTC"})
    organization = Organization.objects.get(name="Rocket Labs")
    assert created["Location"] == step("console-onboarding-invite", organization)
    assert b"Verify your email first" in client.get(created["Location"]).content

    revealed = client.post(step("console-onboarding-key", organization), {"name": "First key"}).content.decode()
    secret = secret_in(revealed)
    assert client.get(step("console-onboarding-key", organization)).content.decode().count(secret) == 0

    page = client.get(step("console-onboarding-test", organization)).content.decode()
    assert 'id="test-request-form"' in page
    assert "Hello from ModelMuxer!" in page
    response = client.post(step("console-onboarding-test", organization), {"text": ""})

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="test-result" data-ok="true"' in page
    answer = re.search(r'<p id="test-answer" class="answer">([^<]*)</p>', page)
    assert answer
    assert answer.group(1) == "Fake reply to: Hello from ModelMuxer!"
    assert re.search(r'<dd id="test-model">[a-z0-9.-]+</dd>', page)
    cost = re.search(r'<dd id="test-cost" class="money">\$([0-9.]+)</dd>', page)
    assert cost
    assert Decimal(cost.group(1)) > 0
    tokens = re.search(r'<dd id="test-tokens" class="num">(\d+) \(', page)
    assert tokens
    assert int(tokens.group(1)) > 0
    assert 'id="to-dashboard"' in page

    user = User.objects.get(email=email)
    recorded = json.dumps([[e.metadata, e.before, e.after] for e in AuditEvent.objects.filter(actor=user)], default=str)
    assert {"user.signed_up", "organization.created", "api_key.created"} <= set(
        AuditEvent.objects.filter(actor=user).values_list("action", flat=True)
    )
    assert secret not in recorded
    assert email not in recorded


@pytest.mark.django_db(transaction=True)
def test_a_gateway_refusal_is_shown_not_raised(
    owner: User, owner_client: Client, organization: Organization, catalog: None, upstream: FakeUpstream
) -> None:
    budget_create(
        organization=organization,
        actor=owner,
        scope=BudgetScope.ORGANIZATION,
        period=BudgetPeriod.MONTHLY,
        limit_usd=Decimal("0.0000001"),
    )
    owner_client.post(step("console-onboarding-key", organization), {"name": "Tight"})

    response = owner_client.post(step("console-onboarding-test", organization), {"text": "Hello"})

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="test-result" data-ok="false"' in page
    assert re.search(r'<p class="error" role="alert" id="test-error">[^<]*[Bb]udget[^<]*</p>', page), page
