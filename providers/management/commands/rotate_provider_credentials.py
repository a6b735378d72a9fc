from typing import Any

from django.core.management.base import BaseCommand

from providers.services import provider_credentials_rotate


class Command(BaseCommand):
    help = "Re-encrypt every stored provider key with the newest key in MUXER_FERNET_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"rotated {provider_credentials_rotate()} provider keys")
