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
) -> AuditEvent:
    """Append one audit event. Callers pass only non-secret metadata."""
    return AuditEvent.objects.create(
        action=action,
        organization=organization,
        actor=actor,
        target_type=target_type,
        target_id=str(target_id),
        metadata=metadata or {},
    )
