"""Input and output shapes of the billing API: budgets, notifications and recommendations."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import APIKey, Organization, Team, User
from providers.models import Model

from .models import Budget, BudgetPeriod, BudgetScope, Notification, default_alert_thresholds
from .services import BUDGET_FIXED_FIELDS

# Which field names the target of each scope; an organization budget has none.
SCOPE_TARGET = {BudgetScope.TEAM: "team", BudgetScope.API_KEY: "api_key", BudgetScope.USER: "user"}
TARGET_FIELDS = ("team", "api_key", "user")


def usd(amount: Decimal) -> str:
    """Money as the API shows it: a decimal string with the ledger's ten places."""
    return f"{amount:.10f}"


class BudgetUsageSerializer(serializers.Serializer[Any]):
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(allow_null=True, help_text="Null for a lifetime budget.")
    spent_usd = serializers.CharField()
    reserved_usd = serializers.CharField(help_text="Held by requests still in flight.")
    remaining_usd = serializers.CharField()


class BudgetSerializer(serializers.ModelSerializer[Budget]):
    usage = serializers.SerializerMethodField(help_text="The current period, in the organization's time zone.")

    class Meta:
        model = Budget
        fields = [
            "id", "name", "scope", "team", "api_key", "user", "model", "period", "limit_usd", "hard_limit",
            "alert_thresholds", "enabled", "created_at", "updated_at", "usage",
        ]  # fmt: skip

    @extend_schema_field(BudgetUsageSerializer)
    def get_usage(self, obj: Budget) -> dict[str, Any]:
        from .budgets import budget_usage

        usage = budget_usage(obj)
        return BudgetUsageSerializer(
            {
                "period_start": usage.period_start,
                "period_end": usage.period_end,
                "spent_usd": usd(usage.spent_usd),
                "reserved_usd": usd(usage.reserved_usd),
                "remaining_usd": usd(usage.remaining_usd),
            }
        ).data


def limit_usd_field(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=20,
        decimal_places=10,
        min_value=Decimal(0),
        help_text="The limit in US dollars, as a decimal string (or number), at most 10 decimal places.",
        **kwargs,
    )


def thresholds_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        max_length=100,
        help_text="Percents of the limit (1-100) that alert, each once per period; stored sorted and unique.",
        **kwargs,
    )


class StrictBudgetInput(serializers.Serializer[Any]):
    """Refuses fields it does not know, so a misspelt one (``limit`` for ``limit_usd``) is an error, not a no-op."""

    fixed_message = ""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            for name in sorted(set(data) - set(self.fields)):
                if name in BUDGET_FIXED_FIELDS and self.fixed_message:
                    raise serializers.ValidationError({name: [self.fixed_message]})
                raise serializers.ValidationError({name: ["is not a budget field."]})
        return super().to_internal_value(data)


class BudgetCreateSerializer(StrictBudgetInput):
    """A new budget. Needs ``organization`` in the context: targets must belong to it."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    scope = serializers.ChoiceField(choices=BudgetScope.choices)
    team = serializers.IntegerField(required=False, allow_null=True, help_text="For a team budget.")
    api_key = serializers.IntegerField(required=False, allow_null=True, help_text="For an API key budget.")
    user = serializers.IntegerField(required=False, allow_null=True, help_text="For a user budget: a member's id.")
    model = serializers.CharField(
        max_length=120, required=False, allow_blank=True, default="", help_text="Only this model's spend; blank: all."
    )
    period = serializers.ChoiceField(choices=BudgetPeriod.choices)
    limit_usd = limit_usd_field()
    hard_limit = serializers.BooleanField(required=False, default=True)
    alert_thresholds = thresholds_field(required=False, default=default_alert_thresholds)
    enabled = serializers.BooleanField(required=False, default=True)

    def validate_model(self, value: str) -> str:
        if value and not Model.objects.filter(name=value).exists():
            raise serializers.ValidationError(f"unknown model: {value}.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        organization: Organization = self.context["organization"]
        scope = attrs["scope"]
        wanted = SCOPE_TARGET.get(scope)
        for name in TARGET_FIELDS:
            if name != wanted and attrs.get(name) is not None:
                raise serializers.ValidationError({name: [f"must be empty for a budget of scope {scope}."]})
        if wanted is None:
            return attrs
        target_id = attrs.get(wanted)
        if target_id is None:
            raise serializers.ValidationError({wanted: [f"is required for a budget of scope {scope}."]})
        target: Team | APIKey | User | None
        if wanted == "team":
            target = Team.objects.filter(organization=organization, pk=target_id).first()
            problem = "No such team in this organization."
        elif wanted == "api_key":
            target = APIKey.objects.filter(organization=organization, pk=target_id).first()
            problem = "No such API key in this organization."
        else:
            target = User.objects.filter(memberships__organization=organization, pk=target_id).first()
            problem = "No such member of this organization."
        if target is None:
            raise serializers.ValidationError({wanted: [problem]})
        attrs[wanted] = target
        return attrs


class BudgetUpdateSerializer(StrictBudgetInput):
    fixed_message = "cannot be changed; create a budget with the new value and delete this one."

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    limit_usd = limit_usd_field(required=False)
    hard_limit = serializers.BooleanField(required=False)
    alert_thresholds = thresholds_field(required=False)
    enabled = serializers.BooleanField(required=False)


class NotificationSerializer(serializers.ModelSerializer[Notification]):
    class Meta:
        model = Notification
        fields = ["id", "kind", "title", "body", "data", "created_at", "read_at"]


class NotificationQuerySerializer(serializers.Serializer[Any]):
    unread = serializers.BooleanField(required=False, default=False, help_text="Only notifications not yet read.")


class RecommendationSerializer(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(choices=["simple_on_expensive", "duplicate_requests", "cheaper_equivalent"])
    title = serializers.CharField()
    detail = serializers.CharField(help_text="What was found, and how the saving was estimated.")
    model = serializers.CharField(help_text="The model the traffic ran on; blank when it spans models.")
    suggested_model = serializers.CharField(help_text="The model to use instead; blank when none applies.")
    evidence = serializers.DictField(help_text="The counts and amounts behind the estimate.")
    monthly_saving_usd = serializers.CharField(help_text="Estimated saving per 30 days, in US dollars.")


class RecommendationQuerySerializer(serializers.Serializer[Any]):
    days = serializers.IntegerField(
        required=False, default=30, min_value=1, max_value=365, help_text="How many days of usage to read (1-365)."
    )
