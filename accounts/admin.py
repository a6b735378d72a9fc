from typing import Any, cast

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpRequest

from . import selectors, services
from .gdpr_admin import UserEraseAdminMixin
from .models import APIKey, Invitation, Membership, Organization, Team, User

POLICY_FIELDS = ("allowed_models", "allowed_providers", "routing_strategy", "routing_preference")


@admin.register(User)
class UserAdmin(UserEraseAdminMixin, BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = (
        (None, {"fields": ("email", "password", "name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


def clean_routing_policy(form: forms.ModelForm[Any], within: Organization | None) -> None:
    """The API's checks for the policy's lists: JSON lists of names that exist (and, for a key, narrow its org's)."""
    lists: dict[str, list[str] | None] = {}
    for field in ("allowed_models", "allowed_providers"):
        value = form.cleaned_data.get(field)
        if field not in form.fields or field not in form.cleaned_data:
            lists[field] = None
        elif not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            form.add_error(field, 'Enter a JSON list of names, like ["a", "b"], or [] for no limit.')
            lists[field] = None
        else:
            lists[field] = value
    for field, messages in selectors.routing_policy_problems(**lists, within=within).items():
        form.add_error(field, messages)


def policy_changes(form: forms.ModelForm[Any]) -> dict[str, Any]:
    return {field: form.cleaned_data[field] for field in POLICY_FIELDS if field in form.changed_data}


def acting_user(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


LIMIT_FIELDS = ("rpm_limit", "tpm_limit")
# The webhook secret is not shown here: it is a credential, set through the organization's settings.
BILLING_FIELDS = ("timezone", "max_output_tokens_cap", "alert_email", "webhook_url")


class OrganizationAdminForm(forms.ModelForm[Organization]):
    class Meta:
        model = Organization
        fields = ("name", "slug", *POLICY_FIELDS, *LIMIT_FIELDS, *BILLING_FIELDS)

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        clean_routing_policy(self, within=None)
        return cleaned


class MembershipInline(admin.TabularInline[Membership, Organization]):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin[Organization]):
    form = OrganizationAdminForm
    list_display = ["name", "slug", "routing_strategy", "routing_preference", "created_at"]
    list_filter = ["routing_strategy", "routing_preference"]
    search_fields = ["name", "slug"]
    fieldsets = (
        (None, {"fields": ("name", "slug")}),
        ("Routing policy", {"fields": POLICY_FIELDS}),
        ("Rate limits (per minute)", {"fields": LIMIT_FIELDS}),
        ("Billing", {"fields": BILLING_FIELDS}),
    )
    inlines = [MembershipInline]

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        # Everything goes through the services, which audit it; only the slug (operators' alone) is a plain save.
        if "slug" in form.changed_data:
            obj.save(update_fields=["slug"])
        values = {field: form.cleaned_data[field] for field in (*LIMIT_FIELDS, *BILLING_FIELDS, "name")}
        changed = {field: value for field, value in values.items() if field in form.changed_data}
        if changed:
            services.organization_update(
                organization=obj, actor=acting_user(request), changes=cast(services.OrganizationChanges, changed)
            )
        changes = policy_changes(form)
        if changes:
            services.organization_routing_policy_update(organization=obj, actor=acting_user(request), **changes)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin[Team]):
    list_display = ["name", "organization", "rpm_limit", "tpm_limit", "created_at"]
    search_fields = ["name", "organization__slug"]


class APIKeyAdminForm(forms.ModelForm[APIKey]):
    class Meta:
        model = APIKey
        fields = (*POLICY_FIELDS, *LIMIT_FIELDS)

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        clean_routing_policy(self, within=self.instance.organization)
        return cleaned


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin[APIKey]):
    """Keys are issued, rotated and revoked through the API's services (which audit them); only the routing
    policy and rate limits are edited here, through the same service."""

    form = APIKeyAdminForm
    list_display = [
        "name", "prefix", "organization", "team", "scopes", "routing_strategy", "routing_preference",
        "created_at", "last_used_at", "expires_at", "revoked_at",
    ]  # fmt: skip
    list_filter = ["revoked_at", "routing_strategy", "routing_preference"]
    search_fields = ["name", "prefix", "organization__slug"]
    readonly_fields = [f.name for f in APIKey._meta.fields if f.name not in {"digest", *POLICY_FIELDS, *LIMIT_FIELDS}]
    exclude = ["digest"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: APIKey, form: Any, change: bool) -> None:
        changes = {
            **policy_changes(form),
            **{field: form.cleaned_data[field] for field in LIMIT_FIELDS if field in form.changed_data},
        }
        if changes:
            services.api_key_update(
                api_key=obj, actor=acting_user(request), changes=cast(services.APIKeyChanges, changes)
            )


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin[Invitation]):
    """Read-only: invitations are sent, revoked and accepted through the API, which audits them."""

    list_display = ["organization", "role", "team", "status", "created_at", "expires_at", "accepted_at", "revoked_at"]
    list_filter = ["role"]
    search_fields = ["organization__slug"]
    exclude = ["digest"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
