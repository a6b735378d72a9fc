"""The audit log in the management API: an organization's events, and their export (DRF).

Owners and admins (``Perm.AUDIT_VIEW``), or an API key with the ``admin``
scope, read their own organization's events; platform events (sign-ins, the
admin's catalog edits) belong to no organization and never show here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponseBase, StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import OrganizationScopedView
from accounts.permissions import Perm
from billing.api import DateOrDateTimeField
from routing.openapi import ORG_ERRORS, error_responses, list_of

from . import exports, selectors
from .selectors import AuditQuery

MAX_LIMIT = 500
DEFAULT_LIMIT = 100


class JSONOnlyNegotiation(BaseContentNegotiation):
    """Always JSON (errors included): ``?format=`` names the export's format here, not a renderer."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return JSONRenderer(), JSONRenderer.media_type


class AuditFilterSerializer(serializers.Serializer[Any]):
    action = serializers.CharField(
        required=False,
        max_length=64,
        help_text="An action (`api_key.created`), or a prefix up to a dot (`api_key`), or ending in `*`.",
    )
    actor = serializers.IntegerField(required=False, min_value=1, help_text="The acting user's id.")
    target_type = serializers.CharField(required=False, max_length=64)
    target_id = serializers.CharField(required=False, max_length=64)
    since = DateOrDateTimeField(required=False, help_text="ISO date or datetime, inclusive.")
    until = DateOrDateTimeField(required=False, help_text="ISO date (through that whole day) or datetime, exclusive.")

    IGNORED: frozenset[str] = frozenset()

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields) - self.IGNORED)
            if unknown:
                raise serializers.ValidationError({unknown[0]: ["is not an audit event filter."]})
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        until = attrs.get("until")
        if until is not None and parse_date(str(self.initial_data.get("until", "")).strip()) is not None:
            attrs["until"] = until + timedelta(days=1)
        since = attrs.get("since")
        if since is not None and attrs.get("until") is not None and since >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be after 'since'."]})
        return attrs

    def audit_query(self) -> AuditQuery:
        data = self.validated_data
        return AuditQuery(
            action=data.get("action"),
            actor=data.get("actor"),
            target_type=data.get("target_type"),
            target_id=data.get("target_id"),
            since=data.get("since"),
            until=data.get("until"),
        )


class AuditListQuerySerializer(AuditFilterSerializer):
    before = serializers.IntegerField(
        required=False, min_value=1, help_text="The cursor: only events older than this id (`next_before`)."
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, default=DEFAULT_LIMIT)


class AuditExportQuerySerializer(AuditFilterSerializer):
    format = serializers.ChoiceField(choices=sorted(exports.FORMATS), required=False, default="csv")


class AuditEventSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    organization_id = serializers.IntegerField()
    actor_id = serializers.IntegerField(allow_null=True, help_text="The acting user; null for a key or the system.")
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()
    request_id = serializers.CharField()
    metadata = serializers.JSONField()
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    prev_hash = serializers.CharField(help_text="The hash of the event before this one in the platform's chain.")
    hash = serializers.CharField(help_text="SHA-256 over this event and prev_hash.")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return exports.event_record(instance)


AUDIT_EVENT_PAGE = list_of(
    AuditEventSerializer,
    name="AuditEventPage",
    extra={
        "has_more": serializers.BooleanField(),
        "next_before": serializers.IntegerField(allow_null=True, help_text="Pass as `before` for the next page."),
    },
)


class AuditView(OrganizationScopedView):
    perms = {"GET": Perm.AUDIT_VIEW}
    content_negotiation_class = JSONOnlyNegotiation


class AuditEventListView(AuditView):
    @extend_schema(
        operation_id="audit_events_list",
        parameters=[AuditListQuerySerializer],
        responses={
            200: AUDIT_EVENT_PAGE,
            **error_responses(*ORG_ERRORS, described={400: "A filter or the cursor is not valid."}),
        },
        description="The organization's audit events, newest first, a page at a time.",
    )
    def get(self, request: Request, org: str) -> Response:
        params = AuditListQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        limit = params.validated_data["limit"]
        events = list(
            selectors.audit_events_for_org(
                organization=self.organization, query=params.audit_query(), before=params.validated_data.get("before")
            )[: limit + 1]
        )
        page, has_more = events[:limit], len(events) > limit
        return Response(
            {
                "object": "list",
                "data": [exports.event_record(event) for event in page],
                "has_more": has_more,
                "next_before": page[-1].pk if has_more else None,
            }
        )


class AuditEventExportView(AuditView):
    @extend_schema(
        operation_id="audit_events_export",
        parameters=[AuditExportQuerySerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/jsonl"): OpenApiTypes.STR,
            **error_responses(*ORG_ERRORS, described={400: "A filter or the format is not valid."}),
        },
        description="Every matching event, oldest first, as CSV (`format=csv`, with a header row) or JSON Lines "
        "(`format=jsonl`, one event per line): " + ", ".join(exports.COLUMNS) + ".",
    )
    def get(self, request: Request, org: str) -> HttpResponseBase:
        params = AuditExportQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        fmt = params.validated_data["format"]
        pages = selectors.audit_event_pages(organization=self.organization, query=params.audit_query())
        content: Iterator[bytes] | AsyncIterator[bytes] = (
            exports.stream_async(fmt, pages)
            if isinstance(request._request, ASGIRequest)
            else exports.stream(fmt, pages)
        )
        response = StreamingHttpResponse(content, content_type=exports.FORMATS[fmt])
        name = exports.export_name(self.organization.slug, fmt, timezone.now())
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response
