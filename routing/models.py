from __future__ import annotations

from django.db import models


class Feedback(models.Model):
    """A client's rating of one answer, keyed by the gateway's request id; labels for retraining the router."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("accounts.APIKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    request_id = models.CharField(max_length=64)
    rating = models.PositiveSmallIntegerField(help_text="1 (bad) to 5 (good).")
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "request_id"], name="feedback_unique_request_per_org"),
            models.CheckConstraint(condition=models.Q(rating__gte=1, rating__lte=5), name="feedback_rating_1_to_5"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.rating}"


class TrainedRouter(models.Model):
    """A semantic router an organization trained on its own labels. The shipped default lives in the repo."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    version = models.CharField(max_length=64)
    weights = models.BinaryField(help_text="The model's arrays, as an .npz archive (no pickles).")
    metrics = models.JSONField(default=dict, blank=True)
    trained_on = models.JSONField(default=dict, blank=True, help_text="What the training saw: sources and counts.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "active", "created_at"])]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.version}"
