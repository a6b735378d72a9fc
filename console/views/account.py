"""Console pages: account (sign-up, email verification, password reset).

Signing in and out, and the home page, are in ``accounts/console.py``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import URLPattern, path, reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts import bruteforce, services
from accounts.models import User
from muxer_project.errors import APIError

from ..account_forms import SignupForm, ThrottledPasswordResetForm, may_send_account_email
from ..account_tokens import email_verification_token, public_url, user_for_uid, verification_link

BACKEND = "accounts.bruteforce.LockoutModelBackend"


def signup(request: HttpRequest) -> HttpResponse:
    """Create an account, sign it in, email the verification link, and start the onboarding wizard."""
    if not settings.MUXER_SIGNUP_ENABLED:
        raise Http404("Sign-up is closed.")
    if request.user.is_authenticated:
        return redirect("console-home")
    form = SignupForm(request.POST if request.method == "POST" else None)
    if form.is_valid() and not bruteforce.signup_admitted(ip=bruteforce.client_ip(request)):
        form.add_error(None, "Too many accounts were created from your network in the last hour; try again later.")
        return render(request, "console/account/signup.html", {"form": form}, status=429)
    if form.is_valid():
        data = form.cleaned_data
        try:
            user = services.user_signup(email=data["email"], name=data["name"], password=data["password"])
        except APIError as exc:
            form.add_error(exc.param if exc.param in form.fields else None, exc.message)
        else:
            services.user_verification_email_send(user=user, link=verification_link(request, user))
            login(request, user, backend=BACKEND)
            messages.success(request, f"Welcome! We sent a verification link to {user.email}.")
            return redirect("console-onboarding")
    return render(request, "console/account/signup.html", {"form": form}, status=400 if form.errors else 200)


def verify_email(request: HttpRequest, uidb64: str, token: str) -> HttpResponse:
    """The emailed link: verifies the address once; a tampered, expired or used link is refused (400)."""
    user = user_for_uid(uidb64)
    if user is None or not email_verification_token.check_token(user, token):
        already = user is not None and user.email_verified_at is not None
        context = {"already_verified": already}
        return render(request, "console/account/verify_email_invalid.html", context, status=400)
    services.user_email_verify(user=user)
    messages.success(request, "Your email address is verified.")
    return redirect("console-home" if request.user.is_authenticated else "console-login")


def _next_url(request: HttpRequest, fallback: str) -> str:
    wanted = request.POST.get("next") or ""
    if url_has_allowed_host_and_scheme(wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return wanted
    return fallback


@require_POST
@login_required
def verify_email_resend(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)  # login_required
    if user.email_verified_at is not None:
        messages.info(request, "Your email address is already verified.")
    elif may_send_account_email(kind="verify", address=user.email):
        services.user_verification_email_send(user=user, link=verification_link(request, user))
        messages.success(request, f"We sent a new verification link to {user.email}.")
    else:
        messages.info(request, "We sent you a link a moment ago; check your inbox (and spam folder) for it.")
    return redirect(_next_url(request, reverse("console-home")))


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "console/account/password_reset.html"
    form_class = ThrottledPasswordResetForm
    email_template_name = "console/account/password_reset_email.txt"
    subject_template_name = "console/account/password_reset_subject.txt"
    success_url = reverse_lazy("console-password-reset-done")

    def form_valid(self, form: Any) -> HttpResponse:
        # Links start with the deployment's public address, not with whatever Host this request named.
        self.extra_email_context = {"site_root": public_url(self.request, "/").rstrip("/")}
        return super().form_valid(form)

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        response.status_code = 400
        return response


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "console/account/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "console/account/password_reset_confirm.html"
    success_url = reverse_lazy("console-password-reset-complete")

    def dispatch(self, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = super().dispatch(*args, **kwargs)
        if not self.validlink and response.status_code == 200:
            response.status_code = 400  # a tampered, expired or used link
        return response

    def form_valid(self, form: SetPasswordForm[Any]) -> HttpResponse:
        response = super().form_valid(form)
        services.user_password_reset_record(user=form.user)
        return response

    def form_invalid(self, form: SetPasswordForm[Any]) -> HttpResponse:
        response = super().form_invalid(form)
        response.status_code = 400
        return response


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "console/account/password_reset_complete.html"


urlpatterns: list[URLPattern] = [
    path("signup/", signup, name="console-signup"),
    path("verify-email/resend/", verify_email_resend, name="console-verify-email-resend"),
    path("verify-email/<str:uidb64>/<str:token>/", verify_email, name="console-verify-email"),
    path("password-reset/", PasswordResetView.as_view(), name="console-password-reset"),
    path("password-reset/sent/", PasswordResetDoneView.as_view(), name="console-password-reset-done"),
    path("password-reset/complete/", PasswordResetCompleteView.as_view(), name="console-password-reset-complete"),
    path(
        "password-reset/<str:uidb64>/<str:token>/",
        PasswordResetConfirmView.as_view(),
        name="console-password-reset-confirm",
    ),
]
