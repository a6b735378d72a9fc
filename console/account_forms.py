"""The account pages' forms: sign-up, and password reset (Django's, throttled per address)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.forms import PasswordResetForm
from django.core.cache import cache
from django.utils.crypto import salted_hmac

from accounts.models import User


class SignupForm(forms.Form):
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})
    )
    name = forms.CharField(max_length=150, label="Your name", widget=forms.TextInput(attrs={"autocomplete": "name"}))
    password = forms.CharField(
        strip=False,
        max_length=128,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )

    def clean_email(self) -> str:
        return str(self.cleaned_data["email"]).strip().lower()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        if password:
            # The validators compare the password with the person's own details.
            candidate = User(email=cleaned.get("email") or "", name=cleaned.get("name") or "")
            try:
                password_validation.validate_password(password, user=candidate)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return cleaned


def may_send_account_email(*, kind: str, address: str) -> bool:
    """At most one email of ``kind`` per address per ``MUXER_ACCOUNT_EMAIL_INTERVAL_SECONDS``.

    Stops anyone from flooding a mailbox through the reset or resend forms. The
    cache key is an HMAC, so no address lands in the cache.
    """
    digest = salted_hmac("console.account_email", f"{kind}:{address.strip().lower()}").hexdigest()[:32]
    return bool(cache.add(f"muxer:account-email:{digest}", 1, timeout=settings.MUXER_ACCOUNT_EMAIL_INTERVAL_SECONDS))


class ThrottledPasswordResetForm(PasswordResetForm):
    """Django's reset form; a second request for one address within the interval sends nothing (and says the same)."""

    def get_users(self, email: str) -> Iterable[User]:
        if not may_send_account_email(kind="password-reset", address=email):
            return iter(())
        return super().get_users(email)
