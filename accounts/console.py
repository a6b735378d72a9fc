"""The console's session sign-in and sign-out, and its home page (the user's organizations)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static

from muxer_project.errors import APIError

from . import bruteforce, selectors, services
from .models import User


class LockoutFormMixin:
    """Says "too many attempts, try again in N minutes" instead of "wrong password" while locked out."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]

    def _lockout_error(self) -> forms.ValidationError | None:
        seconds = bruteforce.lockout_seconds(
            username=self.cleaned_data.get("username"), ip=bruteforce.client_ip(self.request)
        )
        if seconds <= 0:
            return None
        return forms.ValidationError(bruteforce.lockout_message(seconds), code="too_many_attempts")

    def clean(self) -> dict[str, Any]:
        locked = self._lockout_error()
        if locked is not None:
            raise locked
        try:
            return super().clean()  # type: ignore[misc,no-any-return]
        except forms.ValidationError:
            # This failure may be the one that locked the account: say so now.
            locked = self._lockout_error()
            if locked is not None:
                raise locked from None
            raise


class ConsoleAuthenticationForm(LockoutFormMixin, AuthenticationForm):
    pass


class LockoutAdminAuthenticationForm(LockoutFormMixin, AdminAuthenticationForm):
    pass


class ConsoleLoginView(auth_views.LoginView):
    template_name = "console/login.html"
    authentication_form = ConsoleAuthenticationForm
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "signup_enabled": settings.MUXER_SIGNUP_ENABLED}


class ConsoleLogoutView(auth_views.LogoutView):
    """POST only (Django's LogoutView refuses GET), so a link on another site cannot sign anyone out."""


@login_required
def console_home(request: HttpRequest) -> HttpResponse:
    """The organizations the signed-in user belongs to, with their role in each; none yet: the onboarding wizard."""
    user = request.user
    memberships = list(selectors.memberships_for_user(user=user)) if isinstance(user, User) else []
    if not memberships:
        return redirect("console-onboarding")
    return render(request, "console/home.html", {"memberships": memberships})


@login_required
def invitation_accept_page(request: HttpRequest) -> HttpResponse:
    """Where the emailed link lands: shows the invitation, and joins on POST (CSRF-protected).

    The same checks as ``POST /api/invitations/accept/``; a refusal shows its message with its status.
    """
    user = request.user
    assert isinstance(user, User)  # login_required
    token = (request.POST.get("token") if request.method == "POST" else request.GET.get("token")) or ""
    invitation = selectors.invitation_for_token(token=token) if token else None
    context: dict[str, Any] = {"token": token, "invitation": invitation}
    if invitation is None:
        context["error"] = "No such invitation; check the link, or ask for a new one."
        return render(request, "console/invitation.html", context, status=404)
    if request.method == "POST":
        try:
            services.invitation_accept(token=token, user=user)
        except APIError as exc:
            context["error"] = exc.message
            return render(request, "console/invitation.html", context, status=exc.status)
        return redirect("console-home")
    return render(request, "console/invitation.html", context)


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page says; send them to the icon's static URL."""
    return redirect(static("console/favicon.svg"))
