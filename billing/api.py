"""The usage API: an organization's usage summed by group, and its raw records as CSV (DRF).

Any member reads; a non-member gets 404, and so does the id of another
organization's key or team in a filter. Raw records answer the days within
``MUXER_USAGE_RETENTION_DAYS``; earlier days come from the daily rollups
(``rollups_before`` in the answer says from when), which have no user or status,
so the CSV export and per-user or per-status queries cover the retained days only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponseBase, StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import OrganizationScopedView
from accounts.permissions import Perm
from accounts.selectors import api_key_get
from routing.openapi import ORG_ERRORS, error_responses

from . import selectors
from .models import UsageStatus
from .selectors import EXPORT_COLUMNS, GROUPS, UsageQuery, UsageTotals

DEFAULT_PERIOD = timedelta(days=30)
NOT_FOUND = "No such organization (or you are not a member of it), or no such API key or team in it."


def usd(amount: Decimal) -> str:
    """Money as the API shows it: a decimal string with the ledger's ten places."""
    return f"{amount:.10f}"


# --- query parameters ---------------------------------------------------------------------------


# Wide enough for any question about the ledger, narrow enough that a day or a period either side still fits.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


@extend_schema_field({"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]})
class DateOrDateTimeField(serializers.Field[datetime, str, str, Any]):
    """An ISO 8601 date (the start of that UTC day) or datetime (UTC when it names no offset), 1900 to 8999."""

    default_error_messages = {
        "invalid": "must be an ISO 8601 date (YYYY-MM-DD) or datetime.",
        "range": "must be from 1900-01-01 and before 9000-01-01.",
    }

    def to_internal_value(self, data: Any) -> datetime:
        text = str(data).strip()
        try:
            day = parse_date(text)
            moment = None if day else parse_datetime(text)
        except ValueError:
            self.fail("invalid")
        if day is not None:
            moment = datetime.combine(day, time.min, tzinfo=UTC)
        elif moment is None:
            self.fail("invalid")
        elif timezone.is_naive(moment):
            moment = moment.replace(tzinfo=UTC)
        try:
            in_range = EARLIEST <= moment.astimezone(UTC) < LATEST
        except OverflowError:  # an offset that takes it past year 1 or 9999
            in_range = False
        if not in_range:
            self.fail("range")
        return moment

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


class UsageFilterSerializer(serializers.Serializer[Any]):
    """The records a usage query covers: what the export takes (documented as its parameters)."""

    since = DateOrDateTimeField(required=False, help_text="Inclusive. Default: 30 days before `until`.")
    until = DateOrDateTimeField(
        required=False, help_text="Exclusive; a date includes that whole UTC day. Default: now."
    )
    model = serializers.CharField(required=False, max_length=120)
    provider = serializers.CharField(required=False, max_length=40)
    api_key = serializers.IntegerField(required=False, min_value=1, help_text="An API key's id.")
    team = serializers.IntegerField(required=False, min_value=1, help_text="A team's id.")
    status = serializers.ChoiceField(choices=UsageStatus.choices, required=False)

    # DRF's own: ?format=csv chooses the CSV renderer.
    IGNORED = frozenset({"format"})

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields) - self.IGNORED)
            if unknown:
                raise serializers.ValidationError({unknown[0]: ["is not a usage query parameter."]})
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        until_text = str(self.initial_data.get("until", "")).strip()
        until = attrs.get("until")
        if until is None:
            until = timezone.now()
        elif parse_date(until_text) is not None:
            until += timedelta(days=1)  # a date: through the end of that day
        since = attrs.get("since") or until - DEFAULT_PERIOD
        if since >= until:
            raise serializers.ValidationError({"until": ["must be after 'since'."]})
        return {**attrs, "since": since, "until": until, "group_by": attrs.get("group_by", ())}


# Names separated by commas, blanks and spaces allowed; written so that no input makes it backtrack. The
# empty string is left out only because the schema offers it separately (allow_blank).
GROUP_NAME = f"(?:{'|'.join(GROUPS)})"
GROUP_BY_PATTERN = rf"^(?!$)\s*(?:{GROUP_NAME}\s*)?(?:,\s*(?:{GROUP_NAME}\s*)?)*$"


@extend_schema_field({"type": "string", "pattern": GROUP_BY_PATTERN})
class GroupByField(serializers.CharField):
    """Group names, comma-separated (checked by ``UsageQuerySerializer.validate_group_by``)."""


class UsageQuerySerializer(UsageFilterSerializer):
    """A usage summary's query: the filters, and the groups to sum by."""

    group_by = GroupByField(
        required=False, allow_blank=True, help_text=f"Comma-separated, any of: {', '.join(GROUPS)}."
    )

    def validate_group_by(self, value: str) -> tuple[str, ...]:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in GROUPS]
        if unknown:
            raise serializers.ValidationError(f"'{unknown[0]}' is not one of {', '.join(GROUPS)}.")
        return tuple(dict.fromkeys(names))


# --- answers ----------------------------------------------------------------------------------


# Schema only: "errors" and "data" would shadow Serializer attributes as declared fields.
METRIC_FIELDS: dict[str, serializers.Field[Any, Any, Any, Any]] = {
    "requests": serializers.IntegerField(help_text="Requests answered successfully."),
    "errors": serializers.IntegerField(help_text="The rest: errors, disconnects, escalated cascade attempts."),
    "input_tokens": serializers.IntegerField(),
    "output_tokens": serializers.IntegerField(),
    "cached_input_tokens": serializers.IntegerField(),
    "reasoning_tokens": serializers.IntegerField(),
    "cost_usd": serializers.CharField(help_text="Every attempt's cost, a decimal string with ten places."),
}
USAGE_SUMMARY_SCHEMA = inline_serializer(
    name="UsageSummary",
    fields={
        "object": serializers.CharField(),
        "since": serializers.DateTimeField(),
        "until": serializers.DateTimeField(),
        "group_by": serializers.ListField(child=serializers.CharField()),
        "rollups_before": serializers.DateField(
            allow_null=True, help_text="Days before this one came from the daily rollups; null when none did."
        ),
        "data": inline_serializer(
            name="UsageGroup",
            many=True,
            fields={
                "day": serializers.DateField(required=False),
                "model": serializers.CharField(required=False),
                "provider": serializers.CharField(required=False),
                "api_key": serializers.IntegerField(required=False, allow_null=True),
                "team": serializers.IntegerField(required=False, allow_null=True),
                "user": serializers.IntegerField(required=False, allow_null=True),
                "status": serializers.CharField(required=False),
                **METRIC_FIELDS,
            },
        ),
        "totals": inline_serializer(name="UsageTotals", fields=METRIC_FIELDS),
    },
)


def metrics(totals: UsageTotals) -> dict[str, Any]:
    return {
        "requests": totals.requests,
        "errors": totals.errors,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_input_tokens": totals.cached_input_tokens,
        "reasoning_tokens": totals.reasoning_tokens,
        "cost_usd": usd(totals.cost_usd),
    }


def group_values(keys: dict[str, Any]) -> dict[str, Any]:
    return {name: value.isoformat() if isinstance(value, date) else value for name, value in keys.items()}


# --- CSV ---------------------------------------------------------------------------------------


class CSVRenderer(BaseRenderer):
    """Lets content negotiation pick CSV (``Accept: text/csv``, ``?format=csv``); the views stream it themselves."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return b""


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return usd(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return f"'{value}"  # never a spreadsheet formula
    return value


def _csv_lines(rows: list[tuple[Any, ...]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows([_cell(value) for value in row] for row in rows)
    return buffer.getvalue().encode()


class UsageQueryMixin(OrganizationScopedView):
    perms = {"GET": Perm.USAGE_VIEW}

    def usage_query(self, request: Request) -> UsageQuery:
        serializer = UsageQuerySerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        params = serializer.validated_data
        api_key = team = None
        if "api_key" in params:
            api_key = api_key_get(organization=self.organization, key_id=params["api_key"])
            if api_key is None:
                raise NotFound("No such API key.")
        if "team" in params:
            team = selectors.team_get(organization=self.organization, team_id=params["team"])
            if team is None:
                raise NotFound("No such team.")
        return UsageQuery(
            since=params["since"],
            until=params["until"],
            model=params.get("model"),
            provider=params.get("provider"),
            api_key=api_key,
            team=team,
            status=params.get("status"),
            group_by=params["group_by"],
        )

    def csv_response(self, request: Request, query: UsageQuery) -> StreamingHttpResponse:
        pages = selectors.usage_records_pages(organization=self.organization, query=query)
        header = _csv_lines([EXPORT_COLUMNS])
        content: Iterator[bytes] | AsyncIterator[bytes] = (
            _stream_async(header, pages) if isinstance(request._request, ASGIRequest) else _stream(header, pages)
        )
        response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
        name = f"usage-{self.organization.slug}-{query.since:%Y%m%d}-{query.until:%Y%m%d}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        # Errors are JSON in the API's error shape, whichever format was asked for.
        if isinstance(response, Response) and response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


def _stream(header: bytes, pages: Iterator[list[tuple[Any, ...]]]) -> Iterator[bytes]:
    yield header
    for page in pages:
        yield _csv_lines(page)


def _next_page(pages: Iterator[list[tuple[Any, ...]]]) -> list[tuple[Any, ...]] | None:
    return next(pages, None)


async def _stream_async(header: bytes, pages: Iterator[list[tuple[Any, ...]]]) -> AsyncIterator[bytes]:
    # Under ASGI each page is read on the request's database thread, so a long
    # export streams instead of being gathered into memory first.
    yield header
    while True:
        page = await sync_to_async(_next_page)(pages)
        if page is None:
            return
        yield _csv_lines(page)


# --- views -------------------------------------------------------------------------------------


class UsageView(UsageQueryMixin):
    renderer_classes = [JSONRenderer, CSVRenderer]

    @extend_schema(
        operation_id="usage_retrieve",
        parameters=[UsageQuerySerializer],
        responses={
            (200, "application/json"): USAGE_SUMMARY_SCHEMA,
            (200, "text/csv"): OpenApiTypes.STR,
            **error_responses(
                *ORG_ERRORS,
                described={
                    400: "A parameter is not valid, or per-user or per-status figures were asked of days "
                    "only the rollups still hold.",
                    404: NOT_FOUND,
                },
            ),
        },
        description="Requests, errors, tokens and cost of the organization's usage, summed per group and in total. "
        "With `?format=csv` or `Accept: text/csv`, the raw records as the export gives them.",
    )
    def get(self, request: Request, org: str) -> HttpResponseBase:
        query = self.usage_query(request)
        if request.accepted_renderer.format == "csv":
            return self.csv_response(request, query)
        try:
            summary = selectors.usage_summary(organization=self.organization, query=query)
        except selectors.RecordsAgedOut as exc:
            raise serializers.ValidationError({"since": [str(exc)]}) from None
        return Response(
            {
                "object": "usage",
                "since": query.since.isoformat(),
                "until": query.until.isoformat(),
                "group_by": list(query.group_by),
                "rollups_before": summary.rollups_before.isoformat() if summary.rollups_before else None,
                "data": [{**group_values(keys), **metrics(totals)} for keys, totals in summary.groups],
                "totals": metrics(summary.totals),
            }
        )


class UsageExportView(UsageQueryMixin):
    renderer_classes = [CSVRenderer]

    @extend_schema(
        operation_id="usage_export",
        parameters=[UsageFilterSerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            **error_responses(400, *ORG_ERRORS, described={404: NOT_FOUND}),
        },
        description="The raw usage records of the query, oldest first, as CSV: " + ", ".join(EXPORT_COLUMNS) + ".",
    )
    def get(self, request: Request, org: str) -> HttpResponseBase:
        return self.csv_response(request, self.usage_query(request))
