from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin[UsageRecord]):
    list_display = ["created_at", "organization", "model", "provider", "status", "input_tokens", "output_tokens",
                    "cost_usd", "latency_ms", "stream"]  # fmt: skip
    list_filter = ["status", "provider", "stream", "usage_estimated"]
    search_fields = ["request_id", "model", "organization__slug"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
