from typing import Any

from django.core.management.base import BaseCommand

from providers.services import catalog_sync_defaults


class Command(BaseCommand):
    help = "Load the built-in provider and model catalog (list prices), updating existing rows."

    def handle(self, *args: Any, **options: Any) -> None:
        count = catalog_sync_defaults()
        self.stdout.write(f"catalog: {count} models up to date")
