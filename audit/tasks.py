"""Celery tasks of the audit log (``CELERY_BEAT_SCHEDULE`` runs the retention daily)."""

from __future__ import annotations

from celery import shared_task

from .services import audit_retention_apply


@shared_task(name="audit.audit_retention_apply")
def audit_retention_apply_task() -> int:
    """Delete the events older than ``MUXER_AUDIT_RETENTION_DAYS``; returns how many went."""
    result = audit_retention_apply()
    return result.count if result else 0
