from __future__ import annotations

from django.conf import settings
from django.db import models


class UsageStatus(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"
    ESCALATED = "escalated", "Escalated (a cascade judged the answer too weak)"


class UsageRecord(models.Model):
    """One proxied request that reached the provider stage, successful or not."""

    request_id = models.CharField(max_length=64)
    attempt = models.PositiveSmallIntegerField(default=1, help_text="The step of a cascade; 1 otherwise.")
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey("accounts.APIKey", on_delete=models.PROTECT, related_name="+")
    team = models.ForeignKey("accounts.Team", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    model = models.CharField(max_length=120)
    provider = models.CharField(max_length=40)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False, help_text="The provider reported no usage; counts are ours.")
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=24, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    route_strategy = models.CharField(max_length=16, blank=True, help_text="The router that chose the model.")
    route_reason = models.CharField(max_length=255, blank=True)
    prompt_features = models.JSONField(
        null=True, blank=True, help_text="The router's hashed features of the prompt (no text), for retraining."
    )
    complexity = models.FloatField(
        null=True, blank=True, help_text="The heuristic router's score of the prompt (0 easy .. 1 hard)."
    )
    request_fingerprint = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of the request as a cache would key it; equal for duplicates."
    )
    pii_detections = models.JSONField(
        null=True, blank=True, help_text="PII found in the request, as counts per entity type (never the values)."
    )
    cache_hit = models.BooleanField(default=False, help_text="Answered from the response cache: no provider call, $0.")
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["request_id", "attempt"], name="usage_unique_request_attempt")]
        indexes = [
            models.Index(fields=["organization", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"


class RequestLog(models.Model):
    """One usage record's request and response bodies, PII masked; kept only for organizations that opt in."""

    usage = models.OneToOneField(UsageRecord, on_delete=models.CASCADE, related_name="request_log")
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    request_body = models.JSONField(help_text="The request as the client sent it, PII masked.")
    response_body = models.JSONField(
        null=True, blank=True, help_text="The answer as the client got it (a stream assembled), PII masked."
    )
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self) -> str:
        return f"bodies of {self.usage_id}"


class BudgetScope(models.TextChoices):
    ORGANIZATION = "organization", "Organization"
    TEAM = "team", "Team"
    API_KEY = "api_key", "API key"
    USER = "user", "User"


class BudgetPeriod(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    YEARLY = "yearly", "Yearly"
    LIFETIME = "lifetime", "Lifetime"


def default_alert_thresholds() -> list[int]:
    return [50, 80, 95, 100]


class Budget(models.Model):
    """A spending limit in USD for one scope (and optionally one model) over a calendar period.

    Periods align to the calendar in the organization's time zone. A hard limit
    refuses requests whose worst-case cost does not fit; the thresholds (percent
    of the limit) only alert, each once per period.
    """

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=200, blank=True)
    scope = models.CharField(max_length=16, choices=BudgetScope.choices)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    api_key = models.ForeignKey("accounts.APIKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    model = models.CharField(max_length=120, blank=True, help_text="Only this model's spend; blank for every model.")
    period = models.CharField(max_length=16, choices=BudgetPeriod.choices)
    limit_usd = models.DecimalField(max_digits=20, decimal_places=10)
    hard_limit = models.BooleanField(default=True, help_text="Refuse requests that would exceed the limit.")
    alert_thresholds = models.JSONField(
        default=default_alert_thresholds, blank=True, help_text="Percents of the limit that alert, once per period."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "enabled"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(limit_usd__gte=0), name="budget_limit_not_negative"),
            models.CheckConstraint(
                condition=(
                    models.Q(scope="organization", team__isnull=True, api_key__isnull=True, user__isnull=True)
                    | models.Q(scope="team", team__isnull=False, api_key__isnull=True, user__isnull=True)
                    | models.Q(scope="api_key", team__isnull=True, api_key__isnull=False, user__isnull=True)
                    | models.Q(scope="user", team__isnull=True, api_key__isnull=True, user__isnull=False)
                ),
                name="budget_scope_matches_target",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name or self.scope} {self.period} ${self.limit_usd}"


class BudgetAlert(models.Model):
    """One soft threshold crossed in one period of a budget; unique, so each fires once per period."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the limit.")
    spent_usd = models.DecimalField(max_digits=20, decimal_places=10)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_status = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "threshold"], name="budget_alert_once_per_period")
        ]

    def __str__(self) -> str:
        return f"{self.budget_id} {self.threshold}% {self.period_start:%Y-%m-%d}"


class Notification(models.Model):
    """A message for an organization's console (budget alerts and the like)."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=40)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self) -> str:
        return self.title


class UsageRollup(models.Model):
    """One day of usage for one (organization, team, key, model, provider), built from the usage records."""

    day = models.DateField()
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    # 0 when the usage had no team; plain ids (not keys), so a deleted key's history stays.
    team_id = models.BigIntegerField(default=0)
    api_key_id = models.BigIntegerField()
    model = models.CharField(max_length=120)
    provider = models.CharField(max_length=40)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "organization", "team_id", "api_key_id", "model", "provider"],
                name="usage_rollup_unique_group",
            )
        ]
        indexes = [models.Index(fields=["organization", "day"])]

    def __str__(self) -> str:
        return f"{self.day} {self.organization_id} {self.model}"
