"""Operators review the audit log here: read-only (even for superusers), filtered, searchable, exportable.

Exports stream: the rows are read a page at a time (keyset on id, as the API's
export does), so an export of the whole log never sits in memory. The changelist
exports either the selected rows (the actions) or everything its current filters
and search match (``export/<format>/`` with the changelist's query string).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from . import exports
from .models import AuditEvent

EXPORT_PAGE_SIZE = 1000


def event_pages(queryset: QuerySet[AuditEvent], page_size: int | None = None) -> Iterator[list[AuditEvent]]:
    """Every event of ``queryset``, oldest first, a page at a time (keyset on id: each page its own query)."""
    page_size = page_size or EXPORT_PAGE_SIZE
    events = queryset.order_by("id")
    after = 0
    while True:
        page = list(events.filter(id__gt=after)[:page_size])
        if not page:
            return
        yield page
        after = page[-1].pk


def export_response(request: HttpRequest, queryset: QuerySet[AuditEvent], fmt: str, stem: str) -> StreamingHttpResponse:
    pages = event_pages(queryset)
    content: Iterator[bytes] | AsyncIterator[bytes] = (
        exports.stream_async(fmt, pages) if isinstance(request, ASGIRequest) else exports.stream(fmt, pages)
    )
    response = StreamingHttpResponse(content, content_type=exports.FORMATS[fmt])
    name = exports.export_name(stem, fmt, timezone.now())
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = ["created_at", "action", "actor", "organization", "target", "ip", "request_id", "chain"]
    list_select_related = ["actor", "organization"]
    list_filter = [
        "action",
        "target_type",
        ("organization", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    search_fields = ["action", "target_id", "request_id", "ip", "actor__email"]
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

    @admin.display(description="chain (prev → hash)")
    def chain(self, event: AuditEvent) -> str:
        return f"{event.prev_hash[:10] or '∅'} → {event.hash[:10]}"

    @admin.action(description="Export selected as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> StreamingHttpResponse:
        return export_response(request, queryset, "csv", "selected")

    @admin.action(description="Export selected as JSONL")
    def export_jsonl(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> StreamingHttpResponse:
        return export_response(request, queryset, "jsonl", "selected")

    def get_urls(self) -> list[URLPattern]:  # type: ignore[override]
        info = self.opts.app_label, self.opts.model_name
        export = path(
            "export/<str:fmt>/",
            self.admin_site.admin_view(self.export_filtered_view),
            name="{}_{}_export".format(*info),
        )
        return [export, *super().get_urls()]

    def export_filtered_view(self, request: HttpRequest, fmt: str) -> HttpResponse | StreamingHttpResponse:
        """Everything the changelist shows for the same query string (filters, search, date), streamed."""
        if fmt not in exports.FORMATS:
            raise Http404("Unknown export format.")
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Unknown filter in the query string.", content_type="text/plain")
        return export_response(request, changelist.queryset, fmt, "filtered")

    def export_links(self, request: HttpRequest) -> list[tuple[str, str]]:
        query = f"?{request.GET.urlencode()}" if request.GET else ""
        name = f"{self.admin_site.name}:audit_auditevent_export"
        return [(fmt, reverse(name, args=[fmt]) + query) for fmt in exports.FORMATS]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        return super().changelist_view(request, {**(extra_context or {}), "export_links": self.export_links(request)})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
