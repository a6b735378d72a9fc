"""``manage.py permission_matrix``: print the permission matrix as the README's Markdown table."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts.permissions import permission_table


class Command(BaseCommand):
    help = "Print who may do what (accounts.permissions.MATRIX) as a Markdown table, as the README shows it."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(permission_table())
