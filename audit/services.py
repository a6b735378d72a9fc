"""Writing the audit log: the single writer, logins, and retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, router, transaction
from django.utils import timezone

from accounts.models import Organization, User
from muxer_project import metrics

from . import context as request_context
from .chain import PURGE_ACTION, chain_lock, chain_tail, event_hash
from .models import AuditEvent
from .redaction import mask_text, redact

_FROM_CONTEXT: Any = object()
# The trigger on PostgreSQL refuses to delete anything younger, whatever a transaction says.
MIN_PURGE_AGE = timedelta(days=1)


def audit_event_record(
    *,
    action: str,
    organization: Organization | None,
    actor: User | None = None,
    target_type: str = "",
    target_id: str | int = "",
    metadata: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    ip: str | None = _FROM_CONTEXT,
    user_agent: str = _FROM_CONTEXT,
    request_id: str = _FROM_CONTEXT,
) -> AuditEvent:
    """Append one audit event to the chain.

    ``before`` and ``after`` are the target's state around a change. Callers
    refer to people by id, never by email, so erasing a person leaves the chain
    intact; ``metadata``, ``before`` and ``after`` pass through the redactor
    anyway (``audit.redaction``: secret-named keys, secrets and personal data in
    strings). ``ip``, ``user_agent`` and ``request_id`` come from the current
    request (``audit.middleware``) unless given.

    Appends are serialized: inside the caller's transaction the chain stays
    locked until it commits (see ``chain.chain_lock``).
    """
    event = _build_event(
        action=action,
        organization=organization,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        metadata=metadata,
        before=before,
        after=after,
        ip=ip,
        user_agent=user_agent,
        request_id=request_id,
    )
    using = router.db_for_write(AuditEvent)
    with transaction.atomic(using=using):
        chain_lock(using)
        _append(event, using=using, tail=chain_tail(using))
        transaction.on_commit(metrics.audit_events.labels(action).inc, using=using)
    return event


def _build_event(
    *,
    action: str,
    organization: Organization | None,
    actor: User | None,
    target_type: str,
    target_id: str | int,
    metadata: dict[str, Any] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    ip: str | None,
    user_agent: str,
    request_id: str,
) -> AuditEvent:
    bound = request_context.current()
    if ip is _FROM_CONTEXT:
        ip = bound.ip if bound else None
    if user_agent is _FROM_CONTEXT:
        user_agent = bound.user_agent if bound else ""
    if request_id is _FROM_CONTEXT:
        request_id = bound.request_id if bound else ""
    return AuditEvent(
        action=action,
        organization=organization,
        actor=actor,
        target_type=target_type,
        target_id=mask_text(str(target_id))[:64],
        metadata=redact(metadata or {}),
        before=redact(before),
        after=redact(after),
        ip=request_context.normalized_ip(ip),
        user_agent=request_context.clean_user_agent(user_agent),
        request_id=request_id[:64],
    )


def _append(event: AuditEvent, *, using: str, tail: tuple[str, datetime | None]) -> None:
    """Link ``event`` after ``tail`` (the hash and time of the event before it) and save it. Hold the chain lock."""
    prev_hash, last_at = tail
    now = timezone.now()
    # Never before the event it follows (another host's clock may run ahead), so
    # time order is chain order and retention always removes a prefix of the chain.
    event.created_at = max(now, last_at) if last_at else now
    event.prev_hash = prev_hash
    event.hash = event_hash(event)
    event.save(using=using)


def login_recorded(user: User, *, method: str = "session") -> AuditEvent:
    """Record a successful sign-in. Session logins call this through ``user_logged_in``;
    a token endpoint (JWT) calls it itself, with ``method="jwt"``."""
    return audit_event_record(
        action="auth.login",
        organization=None,
        actor=user,
        target_type="user",
        target_id=user.pk,
        metadata={"method": method},
    )


# --- retention -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    count: int
    cutoff: datetime
    event: AuditEvent | None = None  # the audit.purged event, when something was deleted


def audit_events_purge(*, older_than: datetime) -> PurgeResult:
    """Delete the oldest events, those created before ``older_than``, as one block at the chain's start.

    The block ends before the first event at or after ``older_than``, so what
    remains is an unbroken chain. An ``audit.purged`` event records the count
    and the hash of the last deleted event (``anchor_hash``), to which the first
    survivor links. ``older_than`` must be at least a day old. On PostgreSQL the
    append-only trigger lets these deletes through only because this
    transaction says so (``muxer.audit_purge``) and names the same cutoff.
    """
    if older_than > timezone.now() - MIN_PURGE_AGE:
        raise ValueError("The purge cutoff must be at least a day in the past.")
    using = router.db_for_write(AuditEvent)
    with transaction.atomic(using=using):
        chain_lock(using)
        events = AuditEvent.objects.using(using)
        boundary = events.filter(created_at__gte=older_than).order_by("id").values_list("id", flat=True).first()
        doomed = events.filter(id__lt=boundary) if boundary is not None else events.filter(created_at__lt=older_than)
        last = doomed.order_by("-id").values_list("id", "hash").first()
        if last is None:
            return PurgeResult(0, older_than)
        last_id, anchor_hash = last
        # The chain's last event: a survivor, or when none survives, the last one deleted.
        tail = chain_tail(using)
        connection = connections[using]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "SELECT set_config('muxer.audit_purge', 'on', true),"
                    " set_config('muxer.audit_purge_before', %s, true)",
                    [older_than.isoformat()],
                )
            # The ORM refuses to delete audit events; this is the one place that may.
            cursor.execute("DELETE FROM audit_auditevent WHERE id <= %s", [last_id])
            count = cursor.rowcount
            if connection.vendor == "postgresql":
                cursor.execute("SELECT set_config('muxer.audit_purge', 'off', true)")
        event = _build_event(
            action=PURGE_ACTION,
            organization=None,
            actor=None,
            target_type="audit_event",
            target_id=last_id,
            metadata={
                "count": count,
                "older_than": older_than.isoformat(),
                "last_purged_id": last_id,
                "anchor_hash": anchor_hash,
            },
            before=None,
            after=None,
            ip=_FROM_CONTEXT,
            user_agent=_FROM_CONTEXT,
            request_id=_FROM_CONTEXT,
        )
        _append(event, using=using, tail=tail)
    return PurgeResult(count, older_than, event)


def audit_retention_apply(*, now: datetime | None = None) -> PurgeResult | None:
    """Purge events older than ``MUXER_AUDIT_RETENTION_DAYS``; 0 keeps them forever."""
    days = settings.MUXER_AUDIT_RETENTION_DAYS
    if days <= 0:
        return None
    return audit_events_purge(older_than=(now or timezone.now()) - timedelta(days=days))
