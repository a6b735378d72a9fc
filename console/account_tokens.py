"""The emailed email-verification link: signed, expiring, and good for one use.

The token is Django's password-reset token with its own salt, its own
lifetime (``MUXER_EMAIL_VERIFICATION_SECONDS``) and a hash over the user's
address and verification time: once the address is verified (or changed),
every link sent before stops working.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.http import HttpRequest
from django.urls import reverse
from django.utils.crypto import constant_time_compare
from django.utils.encoding import force_bytes, force_str
from django.utils.http import base36_to_int, urlsafe_base64_decode, urlsafe_base64_encode

from accounts import selectors
from accounts.models import User


class EmailVerificationTokenGenerator(PasswordResetTokenGenerator):
    key_salt = "modelmuxer.console.EmailVerificationTokenGenerator"

    def _make_hash_value(self, user: User, timestamp: int) -> str:  # type: ignore[override]
        verified = "" if user.email_verified_at is None else user.email_verified_at.isoformat()
        return f"{user.pk}|{user.email}|{verified}|{timestamp}"

    def check_token(self, user: User | None, token: str | None) -> bool:  # type: ignore[override]
        """Django's check, with this link's own lifetime instead of ``PASSWORD_RESET_TIMEOUT``."""
        if user is None or not token:
            return False
        ts_b36, _, _ = token.partition("-")
        try:
            timestamp = base36_to_int(ts_b36)
        except ValueError:
            return False
        signed = any(
            constant_time_compare(self._make_token_with_timestamp(user, timestamp, secret), token)
            for secret in [self.secret, *self.secret_fallbacks]
        )
        age = self._num_seconds(self._now()) - timestamp
        return signed and 0 <= age <= settings.MUXER_EMAIL_VERIFICATION_SECONDS


email_verification_token = EmailVerificationTokenGenerator()


def public_url(request: HttpRequest, path: str) -> str:
    """``path`` on the deployment's public address (``MUXER_PUBLIC_BASE_URL``), else on this request's host."""
    base = settings.MUXER_PUBLIC_BASE_URL
    if base:
        root = base.removesuffix("/v1")
        return f"{root}{path}"
    return request.build_absolute_uri(path)


def verification_link(request: HttpRequest, user: User) -> str:
    uidb64 = urlsafe_base64_encode(force_bytes(user.pk))
    path = reverse("console-verify-email", args=[uidb64, email_verification_token.make_token(user)])
    return public_url(request, path)


def user_for_uid(uidb64: str) -> User | None:
    try:
        pk = int(force_str(urlsafe_base64_decode(uidb64)))
    except (TypeError, ValueError, OverflowError):
        return None
    return selectors.active_user_get(user_id=pk)
