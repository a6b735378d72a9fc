from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, DecimalField, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.response import TemplateResponse

from accounts.admin import acting_user
from accounts.models import Membership
from providers.models import Model

from . import services
from .models import Budget, BudgetAlert, Notification, UsageRecord, UsageStatus


def usage_totals(queryset: QuerySet[UsageRecord]) -> dict[str, Any]:
    """Requests, tokens and cost of ``queryset``, in one aggregate query."""
    totals = queryset.order_by().aggregate(
        requests=Count("id"),
        errors=Count("id", filter=Q(status=UsageStatus.ERROR)),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        cost_usd=Coalesce(Sum("cost_usd"), Decimal(0), output_field=DecimalField(max_digits=20, decimal_places=10)),
    )
    totals["cost_usd"] = Decimal(totals["cost_usd"]).quantize(Decimal("0.000001"))
    return totals


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin[UsageRecord]):
    """Read-only; the page shows the totals of whatever its filters, search and date select."""

    list_display = ["created_at", "request_id", "organization", "model", "provider", "status", "http_status",
                    "input_tokens", "output_tokens", "cost_usd", "latency_ms", "stream"]  # fmt: skip
    list_select_related = ["organization"]
    list_filter = [
        ("organization", admin.RelatedOnlyFieldListFilter), "model", "provider", "status", "stream", "usage_estimated",
    ]  # fmt: skip
    search_fields = ["request_id", "model", "organization__slug"]
    date_hierarchy = "created_at"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None) if isinstance(response, TemplateResponse) else None
        if context is not None and "cl" in context:
            context["usage_totals"] = usage_totals(context["cl"].queryset)
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class BudgetAdminForm(forms.ModelForm[Budget]):
    """The API's checks: targets of the budget's own organization, a known model, thresholds 1-100, no duplicate."""

    class Meta:
        model = Budget
        fields = ["organization", "name", "scope", "team", "api_key", "user", "model", "period", "limit_usd",
                  "hard_limit", "alert_thresholds", "enabled"]  # fmt: skip

    def clean_alert_thresholds(self) -> list[int]:
        value = self.cleaned_data.get("alert_thresholds")
        if value in (None, ""):
            return []
        if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 100 for t in value
        ):
            raise forms.ValidationError("Enter a JSON list of whole percents from 1 to 100, like [50, 80, 100].")
        return services.normalized_thresholds(value)

    def clean_model(self) -> str:
        value: str = self.cleaned_data.get("model") or ""
        if value and not Model.objects.filter(name=value).exists():
            raise forms.ValidationError(f"Unknown model: {value}.")
        return value

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean() or {}
        organization = cleaned.get("organization") or getattr(self.instance, "organization", None)
        if organization is None:
            return cleaned
        team, api_key, user = cleaned.get("team"), cleaned.get("api_key"), cleaned.get("user")
        if team is not None and team.organization_id != organization.pk:
            self.add_error("team", "This team belongs to another organization.")
        if api_key is not None and api_key.organization_id != organization.pk:
            self.add_error("api_key", "This API key belongs to another organization.")
        if user is not None and not Membership.objects.filter(organization=organization, user=user).exists():
            self.add_error("user", "This user is not a member of the organization.")
        if self.instance.pk is None and not self.errors:
            existing = Budget.objects.filter(
                organization=organization,
                scope=cleaned.get("scope"),
                team=team,
                api_key=api_key,
                user=user,
                model=cleaned.get("model") or "",
                period=cleaned.get("period"),
            ).first()
            if existing is not None:
                self.add_error(None, str(services.BudgetDuplicateError(existing)))
        return cleaned


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin[Budget]):
    """Budgets are created, changed and deleted through their services, which audit them."""

    form = BudgetAdminForm
    list_display = ["__str__", "organization", "scope", "model", "period", "limit_usd", "hard_limit", "enabled"]
    list_filter = ["scope", "period", "hard_limit", "enabled"]
    search_fields = ["name", "model", "organization__slug"]
    raw_id_fields = ["organization", "team", "api_key", "user"]

    def get_readonly_fields(self, request: HttpRequest, obj: Budget | None = None) -> list[str]:
        if obj is None:
            return []
        return ["organization", *services.BUDGET_FIXED_FIELDS, "created_at", "updated_at"]

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if change:
            changes = {f: data[f] for f in services.BUDGET_CHANGEABLE_FIELDS if f in form.changed_data}
            if changes:
                services.budget_update(budget=obj, actor=acting_user(request), **changes)
            return
        fields = ["name", "scope", "team", "api_key", "user", "model", "period", "limit_usd", "hard_limit",
                  "alert_thresholds", "enabled"]  # fmt: skip
        created = services.budget_create(
            organization=data["organization"], actor=acting_user(request), **{f: data[f] for f in fields}
        )
        obj.pk = created.pk

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        services.budget_delete(budget=obj, actor=acting_user(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        for budget in queryset:
            services.budget_delete(budget=budget, actor=acting_user(request))


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin[BudgetAlert]):
    list_display = ["budget", "threshold", "period_start", "spent_usd", "email_sent_at", "webhook_sent_at",
                    "webhook_status", "created_at"]  # fmt: skip
    list_filter = ["threshold", "webhook_status"]
    search_fields = ["budget__name", "budget__organization__slug"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin[Notification]):
    list_display = ["title", "organization", "kind", "created_at", "read_at"]
    list_filter = ["kind"]
    search_fields = ["title", "organization__slug"]
    date_hierarchy = "created_at"
    readonly_fields = ["organization", "kind", "title", "body", "data", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
