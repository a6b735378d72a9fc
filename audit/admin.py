"""Operators review the audit log here: read-only, filtered, searchable, exportable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from . import exports
from .models import AuditEvent


def _export(queryset: QuerySet[AuditEvent], fmt: str) -> HttpResponse:
    events = list(queryset.order_by("id"))
    body = exports.WRITERS[fmt](events, header=True)
    response = HttpResponse(body, content_type=exports.FORMATS[fmt])
    name = exports.export_name("selected", fmt, timezone.now())
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = ["created_at", "action", "actor", "organization", "target", "ip", "request_id"]
    list_select_related = ["actor", "organization"]
    list_filter = [
        "action",
        "target_type",
        ("organization", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    search_fields = ["action", "target_id", "request_id", "ip"]
    date_hierarchy = "created_at"
    actions = ["export_csv", "export_jsonl"]
    # actor_id, not actor: the user may have been deleted since (the row keeps the id).
    readonly_fields = fields = (
        "created_at", "action", "organization", "actor_id", "target_type", "target_id", "metadata", "before",
        "after", "ip", "user_agent", "request_id", "prev_hash", "hash",
    )  # fmt: skip

    @admin.display(description="target")
    def target(self, event: AuditEvent) -> str:
        return f"{event.target_type}:{event.target_id}" if event.target_type else event.target_id

    @admin.action(description="Export selected as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponse:
        return _export(queryset, "csv")

    @admin.action(description="Export selected as JSONL")
    def export_jsonl(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponse:
        return _export(queryset, "jsonl")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
