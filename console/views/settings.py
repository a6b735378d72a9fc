"""Console pages: organization settings, the PII policy, the response cache and request log, and the
organization's own provider keys (BYOK).

A stored provider key is never rendered back: the page shows whether one is
set and its last four characters, as the API does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import URLPattern, path

from accounts.api import OrganizationDetailView
from accounts.permissions import Perm
from providers.api import ProviderCredentialDetailView, ProviderCredentialListView
from providers.models import Provider
from routing.pii import PIIEntity, PIIPolicy

from ..access import OrgAccess, org_page
from ..bridge import api_call
from ..forms_manage import (
    APIForm,
    CacheAndLogSettingsForm,
    OrganizationSettingsForm,
    PIIPolicyForm,
    ProviderCredentialForm,
    byok_providers,
    time_zone_names,
)
from ..submit import done, submit

TEMPLATE = "console/settings/settings.html"


@dataclass(frozen=True)
class CredentialRow:
    provider: Provider
    masked: str
    form: ProviderCredentialForm | None


def pii_rows(organization_policy: Any) -> list[tuple[str, str]]:
    """(entity, action) for readers, each entity with the action it actually gets."""
    try:
        policy = PIIPolicy.from_dict(organization_policy or {})
    except ValueError:
        policy = PIIPolicy()
    return [("default", policy.default.value)] + [
        (entity.value.replace("_", " "), policy.action_for(entity).value) for entity in PIIEntity
    ]


def credential_rows(
    request: HttpRequest, access: OrgAccess, *, bound: ProviderCredentialForm | None
) -> list[CredentialRow]:
    listed = api_call(request, ProviderCredentialListView, org=access.organization.slug)
    masked = {row["provider"]: row["key"] for row in listed.data["data"]} if listed.ok else {}
    rows = []
    for provider in byok_providers():
        form = (
            bound
            if bound is not None and bound.provider.pk == provider.pk
            else ProviderCredentialForm(provider=provider)
        )
        rows.append(CredentialRow(provider=provider, masked=masked.get(provider.slug, ""), form=form))
    return rows


def render_page(
    request: HttpRequest,
    access: OrgAccess,
    *,
    org_form: OrganizationSettingsForm | None = None,
    pii_form: PIIPolicyForm | None = None,
    cache_form: CacheAndLogSettingsForm | None = None,
    credential_form: ProviderCredentialForm | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    organization = access.organization
    if access.can(Perm.ORG_UPDATE):
        org_form = org_form or OrganizationSettingsForm(
            initial={"name": organization.name, "timezone": organization.timezone}
        )
        pii_form = pii_form or PIIPolicyForm(organization=organization)
        cache_form = cache_form or CacheAndLogSettingsForm(organization=organization)
    credentials = credential_rows(request, access, bound=credential_form) if access.can(Perm.CREDENTIALS_MANAGE) else []
    context = access.context(
        org_form=org_form,
        pii_form=pii_form,
        cache_form=cache_form,
        pii_rows=pii_rows(organization.pii_policy),
        time_zones=time_zone_names() if org_form is not None else (),
        credentials=credentials,
        error=error,
    )
    return render(request, TEMPLATE, context, status=status)


def _save_organization(
    request: HttpRequest, access: OrgAccess, form: APIForm, *, page: Callable[..., HttpResponse], saved: str
) -> HttpResponse:
    """PATCH the organization through its API view with one of the page's forms; ``page`` re-renders it."""
    slug = access.organization.slug
    return submit(
        request,
        OrganizationDetailView,
        method="PATCH",
        form=form,
        page=page,
        success=lambda _: done(request, saved, "console-settings", slug),
        org=slug,
    )


@org_page(Perm.ORG_VIEW, post=Perm.ORG_UPDATE)
def settings_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Everyone reads the settings; owners and admins change the name and time zone here."""
    if request.method != "POST":
        return render_page(request, access)
    form = OrganizationSettingsForm(request.POST)
    page = partial(render_page, request, access, org_form=form)
    return _save_organization(request, access, form, page=page, saved="Organization settings saved.")


@org_page(Perm.ORG_VIEW, post=Perm.ORG_UPDATE)
def pii_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    if request.method != "POST":
        return redirect("console-settings", access.organization.slug)
    form = PIIPolicyForm(request.POST, organization=access.organization)
    page = partial(render_page, request, access, pii_form=form)
    return _save_organization(request, access, form, page=page, saved="PII policy saved.")


@org_page(Perm.ORG_VIEW, post=Perm.ORG_UPDATE)
def cache_and_log_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """The response cache's lifetime and the request log (on or off, and how long bodies are kept)."""
    if request.method != "POST":
        return redirect("console-settings", access.organization.slug)
    form = CacheAndLogSettingsForm(request.POST, organization=access.organization)
    page = partial(render_page, request, access, cache_form=form)
    return _save_organization(request, access, form, page=page, saved="Cache and request log settings saved.")


def byok_provider(slug: str) -> Provider:
    for provider in byok_providers():
        if provider.slug == slug:
            return provider
    raise Http404("No such provider.")


@org_page(Perm.ORG_VIEW, post=Perm.CREDENTIALS_MANAGE)
def credential_page(request: HttpRequest, access: OrgAccess, provider: str) -> HttpResponse:
    """Set or replace the organization's own key for a provider."""
    target = byok_provider(provider)
    if request.method != "POST":
        return redirect("console-settings", access.organization.slug)
    form = ProviderCredentialForm(request.POST, provider=target)
    slug = access.organization.slug
    return submit(
        request,
        ProviderCredentialDetailView,
        method="PUT",
        form=form,
        page=partial(render_page, request, access, credential_form=form),
        success=lambda result: done(
            request, f"{target.name} key saved ({result.data['key']}).", "console-settings", slug
        ),
        org=slug,
        provider=target.slug,
    )


@org_page(Perm.ORG_VIEW, post=Perm.CREDENTIALS_MANAGE)
def credential_delete_page(request: HttpRequest, access: OrgAccess, provider: str) -> HttpResponse:
    target = byok_provider(provider)
    if request.method != "POST":
        return redirect("console-settings", access.organization.slug)
    slug = access.organization.slug
    message = f"{target.name} key deleted; the gateway's own key serves it again."
    # The provider exists (byok_provider); the API's 404 means it has no key to delete, which the page says.
    return submit(
        request,
        ProviderCredentialDetailView,
        method="DELETE",
        raise_404=False,
        page=partial(render_page, request, access),
        success=lambda _: done(request, message, "console-settings", slug),
        org=slug,
        provider=target.slug,
    )


urlpatterns: list[URLPattern] = [
    path("<slug:org>/settings/", settings_page, name="console-settings"),
    path("<slug:org>/settings/pii/", pii_page, name="console-settings-pii"),
    path("<slug:org>/settings/cache-and-log/", cache_and_log_page, name="console-settings-cache-log"),
    path("<slug:org>/settings/credentials/<slug:provider>/", credential_page, name="console-credential"),
    path(
        "<slug:org>/settings/credentials/<slug:provider>/delete/",
        credential_delete_page,
        name="console-credential-delete",
    ),
]
