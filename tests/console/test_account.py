"""The console's account pages: sign-up, email verification and password reset."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts import bruteforce
from accounts.models import Organization, Role, User
from audit.models import AuditEvent
from console.account_tokens import EmailVerificationTokenGenerator, email_verification_token
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "a sturdy passphrase 42"
Capture = Callable[..., Any]


def unique_email() -> str:
    return f"person-{uuid.uuid4().hex[:10]}@example.com"


def link_in(message: mail.EmailMessage) -> str:
    """The path of the first console link in an email."""
    found = re.search(r"https?://[^/\s]+(/console/\S+)", str(message.body))
    assert found, message.body
    return found.group(1)


def verify_path(user: User, token: str | None = None) -> str:
    uidb64 = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse("console-verify-email", args=[uidb64, token or email_verification_token.make_token(user)])


def unverified_user(**extra: Any) -> User:
    user = UserFactory.create(email=unique_email(), password=PASSWORD, email_verified_at=None, **extra)
    assert user.email_verified_at is None
    return user


def sign_up(client: Client, **fields: str) -> Any:
    data = {"email": unique_email(), "name": "Ada Lovelace", "password": PASSWORD, **fields}
    return client.post(reverse("console-signup"), data)


# --- sign-up --------------------------------------------------------------------------------------


def test_signup_creates_the_user_signs_them_in_and_starts_the_wizard(
    client: Client, django_capture_on_commit_callbacks: Capture
) -> None:
    email = unique_email()
    with django_capture_on_commit_callbacks(execute=True):
        response = sign_up(client, email=email)

    assert response.status_code == 302
    assert response["Location"] == reverse("console-onboarding")
    user = User.objects.get(email=email)
    assert user.name == "Ada Lovelace"
    assert user.check_password(PASSWORD)
    assert user.email_verified_at is None
    assert client.session["_auth_user_id"] == str(user.pk)


def test_signup_emails_a_verification_link_that_verifies(
    client: Client, django_capture_on_commit_callbacks: Capture
) -> None:
    email = unique_email()
    with django_capture_on_commit_callbacks(execute=True):
        sign_up(client, email=email)

    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [email]
    response = client.get(link_in(mail.outbox[0]))
    assert response.status_code == 302
    assert User.objects.get(email=email).email_verified_at is not None


def test_signup_stores_the_email_in_lower_case(client: Client) -> None:
    sign_up(client, email="Ada.Mixed@Example.COM")

    assert User.objects.filter(email="ada.mixed@example.com").exists()


def test_a_taken_email_is_refused_whatever_its_case(client: Client) -> None:
    taken = UserFactory.create(email=unique_email())

    response = sign_up(client, email=taken.email.upper())

    assert response.status_code == 400
    assert b"An account with this email address already exists." in response.content
    assert User.objects.filter(email__iexact=taken.email).count() == 1
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize(
    ("password", "message"),
    [("12345678", b"This password is too common."), ("short", b"This password is too short.")],
)
def test_a_weak_password_is_refused(client: Client, password: str, message: bytes) -> None:
    email = unique_email()

    response = sign_up(client, email=email, password=password)

    assert response.status_code == 400
    assert message in response.content
    assert not User.objects.filter(email=email).exists()


def test_a_password_like_the_email_is_refused(client: Client) -> None:
    response = sign_up(client, email="gracehopper@example.com", password="gracehopper")

    assert response.status_code == 400
    assert b"The password is too similar to the email." in response.content


def test_missing_fields_are_named(client: Client) -> None:
    response = client.post(reverse("console-signup"), {"email": "not-an-address", "name": "", "password": ""})

    assert response.status_code == 400
    assert b"Enter a valid email address." in response.content
    assert response.content.count(b"This field is required.") == 2


def test_signup_can_be_closed(client: Client, settings: SettingsWrapper) -> None:
    settings.MUXER_SIGNUP_ENABLED = False

    assert client.get(reverse("console-signup")).status_code == 404
    assert sign_up(client).status_code == 404
    assert b'id="signup-link"' not in client.get(reverse("console-login")).content


def test_an_address_may_create_only_so_many_accounts_an_hour(settings: SettingsWrapper) -> None:
    settings.MUXER_SIGNUPS_PER_IP_PER_HOUR = 2
    answers = [sign_up(Client(REMOTE_ADDR="203.0.113.7")).status_code for _ in range(3)]
    elsewhere = sign_up(Client(REMOTE_ADDR="198.51.100.9"))

    assert answers == [302, 302, 429]
    assert User.objects.filter(email__startswith="person-").count() == 3
    assert elsewhere.status_code == 302


def test_an_invalid_form_does_not_count_against_the_address(settings: SettingsWrapper) -> None:
    settings.MUXER_SIGNUPS_PER_IP_PER_HOUR = 1
    client = Client(REMOTE_ADDR="203.0.113.8")

    assert sign_up(client, password="short").status_code == 400
    assert sign_up(client).status_code == 302


def test_a_signed_in_user_is_sent_home_from_signup(owner_client: Client) -> None:
    response = owner_client.get(reverse("console-signup"))

    assert response.status_code == 302
    assert response["Location"] == reverse("console-home")


def test_the_login_page_links_signup_and_password_reset(client: Client) -> None:
    page = client.get(reverse("console-login")).content.decode()

    assert f'href="{reverse("console-signup")}"' in page
    assert f'href="{reverse("console-password-reset")}"' in page
    assert "Forgot your password?" in page


def test_the_signup_page_has_its_form(client: Client) -> None:
    page = client.get(reverse("console-signup")).content.decode()

    assert 'id="signup-form"' in page
    assert 'name="password"' in page


def test_signup_is_audited_without_the_email_address(client: Client) -> None:
    email = unique_email()
    sign_up(client, email=email)
    user = User.objects.get(email=email)

    event = AuditEvent.objects.get(action="user.signed_up")
    assert event.actor_id == user.pk
    assert event.target_id == str(user.pk)
    recorded = json.dumps([event.metadata, event.before, event.after])
    assert email not in recorded
    assert email.split("@")[0] not in recorded


# --- email verification ---------------------------------------------------------------------------


def test_the_verification_link_verifies_and_is_audited(client: Client) -> None:
    user = unverified_user()

    response = client.get(verify_path(user))

    assert response.status_code == 302
    assert response["Location"] == reverse("console-login")
    user.refresh_from_db()
    assert user.email_verified_at is not None
    event = AuditEvent.objects.get(action="user.email_verified")
    assert event.actor_id == user.pk
    assert user.email not in json.dumps([event.metadata, event.before, event.after])


def test_a_tampered_verification_link_is_refused(client: Client) -> None:
    user = unverified_user()
    token = email_verification_token.make_token(user)
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    other = unverified_user()

    for path in (verify_path(user, tampered), verify_path(other, token), "/console/verify-email/zzz/abc-def/"):
        response = client.get(path)
        assert response.status_code == 400, path
        assert b"invalid or has expired" in response.content
    user.refresh_from_db()
    assert user.email_verified_at is None


def test_an_expired_verification_link_is_refused(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    user = unverified_user()
    path = verify_path(user)
    later = datetime.now() + timedelta(days=3, minutes=1)
    monkeypatch.setattr(EmailVerificationTokenGenerator, "_now", lambda self: later)

    response = client.get(path)

    assert response.status_code == 400
    user.refresh_from_db()
    assert user.email_verified_at is None


def test_a_verification_link_works_once(client: Client) -> None:
    user = unverified_user()
    path = verify_path(user)
    client.get(path)
    user.refresh_from_db()
    verified_at = user.email_verified_at

    response = client.get(path)

    assert response.status_code == 400
    assert b"already used" in response.content
    user.refresh_from_db()
    assert user.email_verified_at == verified_at
    assert AuditEvent.objects.filter(action="user.email_verified").count() == 1


def test_resend_emails_a_new_link_but_not_twice_in_a_row(
    client: Client, django_capture_on_commit_callbacks: Capture
) -> None:
    user = unverified_user()
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(reverse("console-verify-email-resend"), {"next": reverse("console-onboarding")})
        client.post(reverse("console-verify-email-resend"))

    assert first.status_code == 302
    assert first["Location"] == reverse("console-onboarding")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [user.email]
    assert client.get(link_in(mail.outbox[0])).status_code == 302
    user.refresh_from_db()
    assert user.email_verified_at is not None


def test_resend_does_not_redirect_to_another_site(client: Client) -> None:
    client.force_login(unverified_user())

    response = client.post(reverse("console-verify-email-resend"), {"next": "https://evil.example/"})

    assert response["Location"] == reverse("console-home")


def test_resend_takes_a_post(client: Client) -> None:
    client.force_login(unverified_user())

    assert client.get(reverse("console-verify-email-resend")).status_code == 405


def test_the_banner_shows_only_while_unverified(client: Client, organization: Organization) -> None:
    user = unverified_user()
    MembershipFactory.create(organization=organization, user=user, role=Role.MEMBER)
    client.force_login(user)

    assert b'id="verify-banner"' in client.get(reverse("console-home")).content
    client.get(verify_path(user))
    assert b'id="verify-banner"' not in client.get(reverse("console-home")).content


# --- password reset -------------------------------------------------------------------------------


def reset_link_for(client: Client, email: str) -> str:
    response = client.post(reverse("console-password-reset"), {"email": email})
    assert response.status_code == 302
    assert response["Location"] == reverse("console-password-reset-done")
    assert len(mail.outbox) == 1
    return link_in(mail.outbox[0])


def set_new_password(client: Client, link: str, password: str) -> Any:
    landing = client.get(link)  # Django moves the token into the session and redirects
    assert landing.status_code == 302
    form_url = landing["Location"]
    assert b'id="password-set-form"' in client.get(form_url).content
    return client.post(form_url, {"new_password1": password, "new_password2": password})


def test_password_reset_end_to_end(client: Client) -> None:
    user = unverified_user()
    new_password = "a brand new passphrase 7"

    response = set_new_password(client, reset_link_for(client, user.email.upper()), new_password)

    assert response.status_code == 302
    assert response["Location"] == reverse("console-password-reset-complete")
    signed_in = Client().post(reverse("console-login"), {"username": user.email, "password": new_password})
    assert signed_in.status_code == 302
    assert signed_in["Location"] == reverse("console-home")
    refused = Client().post(reverse("console-login"), {"username": user.email, "password": PASSWORD})
    assert refused.status_code == 200


def test_password_reset_is_audited_and_verifies_the_email(client: Client) -> None:
    user = unverified_user()

    set_new_password(client, reset_link_for(client, user.email), "a brand new passphrase 7")

    event = AuditEvent.objects.get(action="user.password_reset")
    assert event.actor_id == user.pk
    assert user.email not in json.dumps([event.metadata, event.before, event.after])
    user.refresh_from_db()
    assert user.email_verified_at is not None


def test_password_reset_lifts_the_sign_in_lockout(client: Client, settings: SettingsWrapper) -> None:
    user = unverified_user()
    for _ in range(settings.MUXER_LOGIN_MAX_FAILURES):
        bruteforce.failure_record(username=user.email, ip=None)
    assert bruteforce.lockout_seconds(username=user.email, ip=None) > 0

    set_new_password(client, reset_link_for(client, user.email), "a brand new passphrase 7")

    assert bruteforce.lockout_seconds(username=user.email, ip=None) == 0
    signed_in = Client().post(
        reverse("console-login"), {"username": user.email, "password": "a brand new passphrase 7"}
    )
    assert signed_in.status_code == 302


def test_a_reset_link_works_once(client: Client) -> None:
    user = unverified_user()
    link = reset_link_for(client, user.email)
    set_new_password(client, link, "a brand new passphrase 7")

    response = Client().get(link)

    assert response.status_code == 400
    assert b'id="password-reset-invalid"' in response.content


def test_a_tampered_reset_link_is_refused(client: Client) -> None:
    user = unverified_user()
    link = reset_link_for(client, user.email)
    tampered = link.rstrip("/")[:-1] + ("0" if link.rstrip("/")[-1] != "0" else "1") + "/"

    response = client.get(tampered)

    assert response.status_code == 400
    assert b"invalid or has expired" in response.content


def test_a_weak_new_password_is_refused(client: Client) -> None:
    user = unverified_user()

    response = set_new_password(client, reset_link_for(client, user.email), "12345678")

    assert response.status_code == 400
    assert b"This password is too common." in response.content
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_an_unknown_address_gets_the_same_answer_and_no_email(client: Client) -> None:
    response = client.post(reverse("console-password-reset"), {"email": unique_email()})

    assert response.status_code == 302
    assert response["Location"] == reverse("console-password-reset-done")
    assert mail.outbox == []


def test_a_second_reset_request_within_the_interval_sends_nothing(client: Client) -> None:
    user = unverified_user()
    reset_link_for(client, user.email)

    response = client.post(reverse("console-password-reset"), {"email": user.email})

    assert response.status_code == 302
    assert len(mail.outbox) == 1


def test_reset_links_use_the_public_base_url(client: Client, settings: SettingsWrapper) -> None:
    settings.MUXER_PUBLIC_BASE_URL = "https://muxer.example.com"
    user = unverified_user()

    reset_link_for(client, user.email)

    assert "https://muxer.example.com/console/password-reset/" in str(mail.outbox[0].body)
