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
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["request_id", "attempt"], name="usage_unique_request_attempt")]
        indexes = [
            models.Index(fields=["organization", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"
