"""The onboarding wizard's forms."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from django import forms
from django.core.validators import validate_email

from accounts.models import Role

from .onboarding_snippets import GREETING

MAX_INVITATIONS = 20


@lru_cache(maxsize=1)
def timezone_choices() -> list[tuple[str, str]]:
    zones = sorted(zone for zone in available_timezones() if "/" in zone or zone == "UTC")
    return [(zone, zone.replace("_", " ")) for zone in zones]


class OrganizationForm(forms.Form):
    name = forms.CharField(
        max_length=200,
        label="Organization name",
        help_text="Your company or team; you can rename it later.",
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "organization"}),
    )
    timezone = forms.ChoiceField(
        label="Time zone",
        initial="UTC",
        help_text="Monthly and daily budgets follow this calendar.",
        choices=timezone_choices,
    )


class InviteForm(forms.Form):
    emails = forms.CharField(
        label="Email addresses",
        help_text=f"One per line (or separated by commas); up to {MAX_INVITATIONS}.",
        widget=forms.Textarea(attrs={"rows": 4, "autocomplete": "off", "placeholder": "ada@example.com"}),
    )
    role = forms.ChoiceField(label="Their role", initial=Role.MEMBER)

    def __init__(self, *args: Any, roles: Iterable[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        allowed = set(roles)
        role_field = self.fields["role"]
        assert isinstance(role_field, forms.ChoiceField)
        role_field.choices = [(value, label) for value, label in Role.choices if value in allowed]

    def clean_emails(self) -> list[str]:
        raw = str(self.cleaned_data["emails"])
        emails: list[str] = []
        for address in re.split(r"[\s,;]+", raw):
            if address and address.lower() not in (e.lower() for e in emails):
                emails.append(address)
        if not emails:
            raise forms.ValidationError("Enter at least one email address.")
        if len(emails) > MAX_INVITATIONS:
            raise forms.ValidationError(f"Invite at most {MAX_INVITATIONS} people at once.")
        invalid = []
        for address in emails:
            try:
                validate_email(address)
            except forms.ValidationError:
                invalid.append(address)
        if invalid:
            raise forms.ValidationError(f"Not an email address: {', '.join(invalid)}.")
        return emails


class KeyForm(forms.Form):
    name = forms.CharField(
        max_length=200,
        label="Key name",
        initial="My first key",
        help_text="Say where the key is used (an app, a server); only the name is shown later, never the secret.",
    )


class FirstRequestForm(forms.Form):
    text = forms.CharField(
        max_length=4000,
        required=False,
        label="Your message",
        initial=GREETING,
        widget=forms.Textarea(attrs={"rows": 2}),
    )

    def clean_text(self) -> str:
        return str(self.cleaned_data.get("text") or "").strip() or GREETING
