"""``manage.py audit_verify``: walk the audit chain and say whether it is intact."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.chain import chain_verify


class Command(BaseCommand):
    help = (
        "Recompute every audit event's hash in id order and check each links to the one before "
        "(the first to the start of the chain, or to the anchor a retention purge recorded). "
        "Exits 0 with a one-line summary when intact, 1 naming the first broken event otherwise."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = chain_verify()
        if not report.intact:
            raise CommandError(report.summary())
        self.stdout.write(report.summary())
