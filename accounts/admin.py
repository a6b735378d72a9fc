from typing import Any, cast

from django import forms
from django.contrib import admin
from django.contrib import messages as admin_messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from muxer_project.errors import APIError

from . import selectors, services
from .gdpr_admin import UserEraseAdminMixin
from .models import APIKey, Invitation, Membership, Organization, Role, Team, User

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


LAST_OWNER = "An organization needs at least one owner; make someone else an owner first."


def owners_after(organization: Organization | None, *, changed: dict[int, str | None], added: list[str]) -> int:
    """How many owners ``organization`` would have with ``changed`` (membership id -> new role, or None when
    removed) applied and the ``added`` roles joined."""
    current: dict[int, str] = (
        dict(Membership.objects.filter(organization=organization).values_list("pk", "role"))
        if organization is not None and organization.pk is not None
        else {}
    )
    current.update({pk: role for pk, role in changed.items() if role is not None})
    kept = [role for pk, role in current.items() if not (pk in changed and changed[pk] is None)]
    return sum(1 for role in [*kept, *added] if role == Role.OWNER)


class MembershipInlineFormSet(forms.BaseInlineFormSet):  # type: ignore[type-arg]
    """The services' rules, checked before anything is saved: someone stays owner, a team of the organization,
    and a membership stays that person's (to move it, remove it and add another)."""

    def clean(self) -> None:
        super().clean()
        changed: dict[int, str | None] = {}
        added: list[str] = []
        had_members = self.instance.pk is not None and Membership.objects.filter(organization=self.instance).exists()
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or not form.cleaned_data:
                continue
            data = form.cleaned_data
            team = data.get("team")
            if team is not None and self.instance.pk is not None and team.organization_id != self.instance.pk:
                form.add_error("team", "This team belongs to another organization.")
            existing = form.instance.pk is not None and not form.instance._state.adding
            if existing and data.get("DELETE"):
                changed[form.instance.pk] = None
            elif existing:
                if "user" in form.changed_data:
                    form.add_error("user", "To give this membership to someone else, remove it and add a new one.")
                changed[form.instance.pk] = data.get("role")
            elif not data.get("DELETE") and data.get("user") is not None:
                added.append(data.get("role") or Role.MEMBER)
        if (had_members or changed) and owners_after(self.instance, changed=changed, added=added) == 0:
            raise forms.ValidationError(LAST_OWNER)


class MembershipInline(admin.TabularInline[Membership, Organization]):
    """Saved through the membership services (``OrganizationAdmin.save_formset``), which audit each change."""

    model = Membership
    formset = MembershipInlineFormSet
    extra = 0
    fields = ["user", "role", "team", "created_at"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["user"]


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)
        return queryset


def key_status(api_key: APIKey) -> str:
    if api_key.revoked_at is not None:
        return "revoked"
    return "active" if api_key.is_active else "expired"


# What an operator sees of a key anywhere in the admin: never the digest (nor, of course, the secret).
KEY_DISPLAY_FIELDS = ("prefix", "name", "team", "scopes", "status", "created_at", "last_used_at", "expires_at",
                      "revoked_at")  # fmt: skip


class APIKeyInline(admin.TabularInline[APIKey, Organization]):
    """The organization's keys, read-only and by prefix; each links to its own page (policy, limits, revoke)."""

    model = APIKey
    fk_name = "organization"
    extra = 0
    fields = readonly_fields = KEY_DISPLAY_FIELDS
    ordering = ["-created_at"]
    show_change_link = True
    verbose_name_plural = "API keys (shown by prefix; issue keys through the console or the API)"

    @admin.display(description="status")
    def status(self, api_key: APIKey) -> str:
        return key_status(api_key)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin[Organization]):
    form = OrganizationAdminForm
    list_display = ["name", "slug", "members", "active_keys", "rpm_limit", "tpm_limit", "routing_strategy",
                    "routing_preference", "created_at"]  # fmt: skip
    list_filter = ["routing_strategy", "routing_preference", "created_at"]
    search_fields = ["name", "slug", "memberships__user__email"]
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("name", "slug")}),
        ("Routing policy", {"fields": POLICY_FIELDS}),
        ("Rate limits (per minute)", {"fields": LIMIT_FIELDS}),
        ("Billing", {"fields": BILLING_FIELDS}),
    )
    inlines = [MembershipInline, APIKeyInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        now = timezone.now()
        active = Q(api_keys__revoked_at__isnull=True) & (
            Q(api_keys__expires_at__isnull=True) | Q(api_keys__expires_at__gt=now)
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                member_count=Count("memberships", distinct=True),
                active_key_count=Count("api_keys", filter=active, distinct=True),
            )
        )

    @admin.display(description="members", ordering="member_count")
    def members(self, organization: Organization) -> int:
        return int(getattr(organization, "member_count", 0))

    @admin.display(description="active keys", ordering="active_key_count")
    def active_keys(self, organization: Organization) -> int:
        return int(getattr(organization, "active_key_count", 0))

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        # Through the services (audited; the formset's clean already applied their rules), never a plain save.
        actor = acting_user(request)
        formset.save(commit=False)
        with transaction.atomic():
            for membership in formset.deleted_objects:
                services.membership_remove(membership=membership, actor=actor)
            for membership, changed in formset.changed_objects:
                changes = {field: getattr(membership, field) for field in ("role", "team") if field in changed}
                if changes:
                    services.membership_update(
                        membership=membership, actor=actor, changes=cast(services.MembershipChanges, changes)
                    )
            for membership in formset.new_objects:
                services.membership_add(
                    organization=form.instance,
                    user=membership.user,
                    role=membership.role,
                    team=membership.team,
                    actor=actor,
                )

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


class MembershipAdminForm(forms.ModelForm[Membership]):
    class Meta:
        model = Membership
        fields = ("organization", "user", "role", "team")

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean() or {}
        organization = cleaned.get("organization") or (self.instance.organization if self.instance.pk else None)
        team = cleaned.get("team")
        if team is not None and organization is not None and team.organization_id != organization.pk:
            self.add_error("team", "This team belongs to another organization.")
        role = cleaned.get("role")
        changing_role = self.instance.pk is not None and "role" in self.changed_data and role is not None
        if changing_role and owners_after(self.instance.organization, changed={self.instance.pk: role}, added=[]) == 0:
            self.add_error("role", LAST_OWNER)
        return cleaned


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin[Membership]):
    """Who belongs to which organization, with what role. Saved and removed through the membership services,
    which audit each change and keep an owner in every organization."""

    form = MembershipAdminForm
    list_display = ["user", "organization", "role", "team", "created_at"]
    list_select_related = ["user", "organization", "team"]
    list_filter = ["role", ("organization", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__email", "user__name", "organization__slug", "organization__name"]
    autocomplete_fields = ["user", "organization"]
    raw_id_fields = ["team"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        return ["organization", "user", "created_at"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if change:
            changes = {field: data[field] for field in ("role", "team") if field in form.changed_data}
            if changes:
                services.membership_update(
                    membership=obj, actor=acting_user(request), changes=cast(services.MembershipChanges, changes)
                )
            return
        created = services.membership_add(
            organization=data["organization"], user=data["user"], role=data["role"], team=data.get("team"),
            actor=acting_user(request),
        )  # fmt: skip
        obj.pk = created.pk

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Removals one at a time: the bulk delete logs every row as deleted before the service may refuse one.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Membership | None = None) -> bool:
        if obj is not None and owners_after(obj.organization, changed={obj.pk: None}, added=[]) == 0:
            return False  # the last owner stays
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        try:
            services.membership_remove(membership=obj, actor=acting_user(request))
        except APIError as error:
            self.message_user(request, str(error.message), admin_messages.ERROR)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset.order_by("pk"):
            try:
                services.membership_remove(membership=membership, actor=acting_user(request))
            except APIError as error:
                self.message_user(request, f"{membership}: {error.message}", admin_messages.ERROR)


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
        "prefix", "name", "organization", "team", "scopes", "status", "last_used_at", "created_at", "expires_at",
        "routing_strategy", "routing_preference",
    ]  # fmt: skip
    list_select_related = ["organization", "team"]
    list_filter = [
        KeyStatusFilter, ("organization", admin.RelatedOnlyFieldListFilter), "routing_strategy", "routing_preference",
    ]  # fmt: skip
    search_fields = ["name", "prefix", "organization__slug", "organization__name"]
    date_hierarchy = "created_at"
    actions = ["revoke_keys"]
    readonly_fields = [
        *(f.name for f in APIKey._meta.fields if f.name not in {"digest", *POLICY_FIELDS, *LIMIT_FIELDS}),
        "status",
    ]
    exclude = ["digest"]

    @admin.display(description="status")
    def status(self, api_key: APIKey) -> str:
        return key_status(api_key)

    @admin.action(description="Revoke the selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> None:
        """Each through ``api_key_revoke``: audited, and every gateway stops accepting it within the key cache's
        lifetime, exactly as a revoke through the API."""
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True).order_by("pk"):
            services.api_key_revoke(api_key=api_key, actor=acting_user(request))
            revoked += 1
        skipped = queryset.count() - revoked
        tail = f" ({skipped} already revoked)" if skipped else ""
        self.message_user(request, f"Revoked {revoked} API key(s){tail}.", admin_messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: APIKey | None = None) -> bool:
        # A revoked key is history: nothing about it changes any more (the service refuses it too).
        if obj is not None and obj.revoked_at is not None:
            return False
        return super().has_change_permission(request, obj)

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
