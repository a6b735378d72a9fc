import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts import keys, services
from accounts.models import APIKey, Organization, User
from providers.models import Provider
from providers.services import catalog_sync_defaults

DEMO_EMAIL = "demo@modelmuxer.local"
DEMO_ORG_SLUG = "demo"
DEMO_KEY_NAME = "demo key"


class Command(BaseCommand):
    help = (
        "Create the demo organization and a demo API key wired to the built-in fake provider, and print the key. "
        "MUXER_DEMO_API_KEY, if set, becomes the demo key; otherwise a fresh key replaces the previous demo key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--generate", action="store_true", help="Only print a new well-formed key and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["generate"]:
            self.stdout.write(keys.generate_key())
            return
        wanted = os.environ.get("MUXER_DEMO_API_KEY", "").strip()
        if wanted and not keys.is_well_formed(wanted):
            raise CommandError(
                "MUXER_DEMO_API_KEY is not a well-formed ModelMuxer key; "
                "get one with `manage.py demo_setup --generate`."
            )
        secret = self._setup(wanted or None)
        self.stdout.write(f"demo organization: {DEMO_ORG_SLUG}")
        self.stdout.write(f"demo API key: {secret}")

    @transaction.atomic
    def _setup(self, wanted: str | None) -> str:
        catalog_sync_defaults()
        Provider.objects.filter(slug="fake").update(enabled=True)
        user, created = User.objects.get_or_create(email=DEMO_EMAIL, defaults={"name": "Demo user"})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        organization = Organization.objects.filter(slug=DEMO_ORG_SLUG).first()
        if organization is None:
            organization = services.organization_create(name="Demo", owner=user, slug=DEMO_ORG_SLUG)
        existing = APIKey.objects.filter(organization=organization, name=DEMO_KEY_NAME, revoked_at__isnull=True)
        if wanted is not None:
            match = APIKey.objects.filter(prefix=keys.lookup_prefix(wanted)).first()
            if match is not None:
                if match.organization_id != organization.pk or match.digest != keys.key_digest(wanted):
                    raise CommandError("MUXER_DEMO_API_KEY collides with another key; choose another.")
                if match.revoked_at is not None:
                    raise CommandError("MUXER_DEMO_API_KEY was revoked; generate another.")
                return wanted
        for old in existing:
            services.api_key_revoke(api_key=old, actor=user)
        issued = services.api_key_create(organization=organization, name=DEMO_KEY_NAME, created_by=user, secret=wanted)
        return issued.secret
