"""Reading the audit log: an organization's events, filtered, newest first."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet

from accounts.models import Organization

from .models import AuditEvent


@dataclass(frozen=True)
class AuditQuery:
    """Filters; every one is optional. ``action`` matches itself and what it prefixes up to a dot
    (``api_key`` matches ``api_key.created``); a trailing ``*`` matches any continuation."""

    action: str | None = None
    actor: int | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def action_filter(action: str) -> Q:
    if action.endswith("*"):
        return Q(action__startswith=action[:-1])
    return Q(action=action) | Q(action__startswith=f"{action}.")


def filtered(events: QuerySet[AuditEvent], query: AuditQuery) -> QuerySet[AuditEvent]:
    if query.action:
        events = events.filter(action_filter(query.action))
    if query.actor is not None:
        events = events.filter(actor_id=query.actor)
    if query.target_type:
        events = events.filter(target_type=query.target_type)
    if query.target_id:
        events = events.filter(target_id=query.target_id)
    if query.since is not None:
        events = events.filter(created_at__gte=query.since)
    if query.until is not None:
        events = events.filter(created_at__lt=query.until)
    return events


def audit_events_for_org(
    *, organization: Organization, query: AuditQuery, before: int | None = None
) -> QuerySet[AuditEvent]:
    """The organization's events matching ``query``, newest first; with ``before``, only older ids (the cursor)."""
    events = filtered(AuditEvent.objects.filter(organization=organization), query)
    if before is not None:
        events = events.filter(id__lt=before)
    return events.order_by("-id")


def audit_event_pages(
    *, organization: Organization, query: AuditQuery, page_size: int = 1000
) -> Iterator[list[AuditEvent]]:
    """Every matching event, oldest first, a page at a time (keyset on id), for exports."""
    events = filtered(AuditEvent.objects.filter(organization=organization), query).order_by("id")
    after = 0
    while True:
        page = list(events.filter(id__gt=after)[:page_size])
        if not page:
            return
        yield page
        after = page[-1].pk
