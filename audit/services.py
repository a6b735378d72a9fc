from __future__ import annotations

from typing import Any

from accounts.models import Organization, User

from .models import AuditEvent


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
) -> AuditEvent:
    """Append one audit event.

    ``before`` and ``after`` are the target's state around a change. Callers
    pass only non-secret values and refer to people by id, never by email, so
    erasing a person leaves the chain intact.
    """
    return AuditEvent.objects.create(
        action=action,
        organization=organization,
        actor=actor,
        target_type=target_type,
        target_id=str(target_id),
        metadata=metadata or {},
        before=before,
        after=after,
    )
