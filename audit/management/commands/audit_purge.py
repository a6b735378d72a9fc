"""``manage.py audit_purge``: apply the audit log's retention now (the beat schedule does it daily)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import MIN_PURGE_AGE, audit_events_purge


def _events(count: int) -> str:
    return f"{count} audit event{'' if count == 1 else 's'}"


class Command(BaseCommand):
    help = (
        "Delete audit events older than MUXER_AUDIT_RETENTION_DAYS (or --days), oldest first, and record an "
        "audit.purged event that anchors the rest of the chain."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None, help="Keep this many days instead of the setting.")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.MUXER_AUDIT_RETENTION_DAYS
        if days <= 0:
            self.stdout.write("Audit retention is off (MUXER_AUDIT_RETENTION_DAYS=0): nothing deleted.")
            return
        cutoff = timezone.now() - timedelta(days=days)
        if timedelta(days=days) < MIN_PURGE_AGE:
            raise CommandError("Audit events are kept at least a day.")
        if options["dry_run"]:
            count = AuditEvent.objects.filter(created_at__lt=cutoff).count()
            self.stdout.write(f"{_events(count)} older than {cutoff:%Y-%m-%d %H:%M} UTC (dry run).")
            return
        result = audit_events_purge(older_than=cutoff)
        self.stdout.write(f"Deleted {_events(result.count)} older than {cutoff:%Y-%m-%d %H:%M} UTC.")
