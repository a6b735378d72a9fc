import hashlib
import os
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from accounts import keys, services
from accounts.models import APIKey, Organization, User
from billing.models import UsageRecord, UsageStatus
from billing.pricing import cost_usd
from providers.adapters.base import Usage
from providers.catalog import forget_catalog, get_catalog_sync
from providers.models import Provider
from providers.services import catalog_sync_defaults
from routing.strategies.heuristic import assess

DEMO_EMAIL = "demo@modelmuxer.local"
DEMO_ORG_SLUG = "demo"
DEMO_KEY_NAME = "demo key"
# The sample history: its own key (whose secret is never kept), request ids with this prefix.
DEMO_TRAFFIC_KEY_NAME = "sample traffic (demo data)"
DEMO_REQUEST_PREFIX = "demo-"
DEMO_DAYS = 30
# The demo key's own limits, so a first request shows the x-ratelimit-* headers; 0 turns one off.
DEMO_RPM = 600
DEMO_TPM = 1_000_000


class Command(BaseCommand):
    help = (
        "Create the demo organization and a demo API key wired to the built-in fake provider, and print the key. "
        "MUXER_DEMO_API_KEY, if set, becomes the demo key; otherwise a fresh key replaces the previous demo key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--generate", action="store_true", help="Only print a new well-formed key and exit.")
        parser.add_argument("--rpm", type=int, default=DEMO_RPM, help="The demo key's requests per minute (0: none).")
        parser.add_argument("--tpm", type=int, default=DEMO_TPM, help="The demo key's tokens per minute (0: none).")

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
        for name in ("rpm", "tpm"):
            if options[name] < 0:
                raise CommandError(f"--{name} must be 0 (no limit) or more.")
        password = os.environ.get("MUXER_DEMO_PASSWORD", "").strip() or secrets.token_urlsafe(12)
        secret = self._setup(wanted or None, rpm=options["rpm"] or None, tpm=options["tpm"] or None)
        self._console_login(password)
        self.stdout.write(f"demo organization: {DEMO_ORG_SLUG}")
        self.stdout.write(f"demo API key: {secret}")
        self.stdout.write(f"demo console login: {DEMO_EMAIL} {password}")

    def _console_login(self, password: str) -> None:
        """The demo user signs in to the console with this password (MUXER_DEMO_PASSWORD, else a new one)."""
        user = User.objects.get(email=DEMO_EMAIL)
        user.set_password(password)
        user.email_verified_at = user.email_verified_at or timezone.now()
        user.save(update_fields=["password", "email_verified_at"])

    @transaction.atomic
    def _setup(self, wanted: str | None, *, rpm: int | None, tpm: int | None) -> str:
        catalog_sync_defaults()
        Provider.objects.filter(slug="fake").update(enabled=True)
        user, created = User.objects.get_or_create(email=DEMO_EMAIL, defaults={"name": "Demo user"})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        organization = Organization.objects.filter(slug=DEMO_ORG_SLUG).first()
        if organization is None:
            organization = services.organization_create(name="Demo", owner=user, slug=DEMO_ORG_SLUG)
        demo_usage_create(organization=organization, user=user)
        existing = APIKey.objects.filter(organization=organization, name=DEMO_KEY_NAME, revoked_at__isnull=True)
        if wanted is not None:
            match = APIKey.objects.filter(prefix=keys.lookup_prefix(wanted)).first()
            if match is not None:
                if match.organization_id != organization.pk or match.digest != keys.key_digest(wanted):
                    raise CommandError("MUXER_DEMO_API_KEY collides with another key; choose another.")
                if match.revoked_at is not None:
                    raise CommandError("MUXER_DEMO_API_KEY was revoked; generate another.")
                if (match.rpm_limit, match.tpm_limit) != (rpm, tpm):
                    match.rpm_limit, match.tpm_limit = rpm, tpm
                    match.save(update_fields=["rpm_limit", "tpm_limit"])
                return wanted
        for old in existing:
            services.api_key_revoke(api_key=old, actor=user)
        issued = services.api_key_create(
            organization=organization, name=DEMO_KEY_NAME, created_by=user, secret=wanted, rpm_limit=rpm, tpm_limit=tpm
        )
        return issued.secret


# --- sample usage, so that reports and recommendations show real figures -----------------------


@dataclass(frozen=True)
class Workload:
    """One application's traffic: its model, its prompts and its shape."""

    name: str
    model: str
    prompts: tuple[str, ...]
    per_day: int
    context_tokens: int
    output_tokens: tuple[int, int]
    # Share of requests repeating a prompt from the list word for word; the rest are one-offs.
    repeat_share: float
    cached_share: float = 0.0


SUPPORT_FAQ = (
    "Hello! How do I reset my password?",
    "How do I change the email address on my account?",
    "Where can I download my invoices?",
    "Can I pay by bank transfer?",
    "Thanks! Can you define what an invoice is?",
    "What time zone are your support hours in?",
    "How do I cancel my subscription?",
    "Do you offer a discount for non-profits?",
    "How do I add a team member?",
    "Is there a mobile app?",
    "What is the capital of France?",
    "How do I turn on two-factor authentication?",
)
SUPPORT_ONE_OFF = "My order {n} has not arrived yet, where is it?"
CODE_PROMPTS = (
    "Refactor this Python function to be async and add a unit test. (ticket {n})",
    "Debug this TypeScript compile error in my React component. (ticket {n})",
    "Explain why this SQL query is slow and propose an index. (ticket {n})",
    "Write a bash script that rotates the logs in /var/log/app and compresses them. (ticket {n})",
)
SUMMARY_PROMPTS = (
    "Summarize this support ticket as JSON with fields customer, product and sentiment. (ticket {n})",
    "Extract the dates and amounts from this invoice and format as CSV. (invoice {n})",
    "Translate this product description into French. (product {n})",
)
RESEARCH_PROMPTS = (
    "Compare the tradeoffs of PostgreSQL and DynamoDB for an event store and justify a recommendation. ({n})",
    "Analyze the root cause of last week's checkout outage step by step and plan for prevention. ({n})",
    "What is the capital of Australia? ({n})",
    "Hello, what time is it in Tokyo? ({n})",
)
WORKLOADS = (
    Workload("support bot", "gpt-4o", SUPPORT_FAQ, per_day=80, context_tokens=900, output_tokens=(60, 260),
             repeat_share=0.4, cached_share=0.7),
    Workload("code assistant", "claude-sonnet-4-6", CODE_PROMPTS, per_day=18, context_tokens=2500,
             output_tokens=(400, 1500), repeat_share=0.0),
    Workload("ticket summaries", "gpt-4o-mini", SUMMARY_PROMPTS, per_day=25, context_tokens=3000,
             output_tokens=(150, 400), repeat_share=0.0),
    Workload("research", "gpt-5", RESEARCH_PROMPTS, per_day=6, context_tokens=1500, output_tokens=(800, 3000),
             repeat_share=0.0),
)  # fmt: skip


def demo_usage_create(*, organization: Organization, user: User, now: datetime | None = None) -> int:
    """Write about a month of sample usage for the demo organization, once; returns the rows written.

    Deterministic (a fixed seed), priced at the catalog's prices, with the
    heuristic router's complexity of each prompt and the fingerprints that make
    repeated requests duplicates. Workloads whose model is not in the catalog
    are left out.
    """
    if UsageRecord.objects.filter(organization=organization, request_id__startswith=DEMO_REQUEST_PREFIX).exists():
        return 0
    key = APIKey.objects.filter(organization=organization, name=DEMO_TRAFFIC_KEY_NAME).first()
    if key is None:
        key = services.api_key_create(organization=organization, name=DEMO_TRAFFIC_KEY_NAME, created_by=user).api_key
    forget_catalog()
    catalog = get_catalog_sync()
    rng = random.Random(20261126)  # noqa: S311 - sample data, not secrets
    end = now or timezone.now()
    rows: list[UsageRecord] = []
    for day in range(DEMO_DAYS):
        weekend = (end - timedelta(days=day)).weekday() >= 5
        for workload in WORKLOADS:
            model = catalog.get(workload.model)
            if model is None:
                continue
            count = max(1, round(workload.per_day * (0.4 if weekend else 1.0) * rng.uniform(0.8, 1.2)))
            for _ in range(count):
                n = len(rows) + 1
                if rng.random() < workload.repeat_share:
                    prompt = rng.choice(workload.prompts)
                elif workload.prompts is SUPPORT_FAQ:
                    prompt = SUPPORT_ONE_OFF.format(n=40_000 + n)
                else:
                    prompt = rng.choice(workload.prompts).format(n=10_000 + n)
                input_tokens = workload.context_tokens + len(prompt) // 4
                failed = rng.random() < 0.015
                output_tokens = 0 if failed else rng.randint(*workload.output_tokens)
                cached = int(workload.context_tokens * 0.85) if rng.random() < workload.cached_share else 0
                usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached)
                request = {"model": workload.model, "messages": [{"role": "user", "content": prompt}]}
                rows.append(
                    UsageRecord(
                        request_id=f"{DEMO_REQUEST_PREFIX}{n:06d}",
                        organization=organization,
                        api_key=key,
                        user=user,
                        model=model.name,
                        provider=model.provider,
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                        cached_input_tokens=cached,
                        cost_usd=0 if failed else cost_usd(model, usage),
                        latency_ms=300 + output_tokens * rng.randint(8, 20),
                        status=UsageStatus.ERROR if failed else UsageStatus.OK,
                        http_status=502 if failed else 200,
                        error_code="upstream_error" if failed else "",
                        stream=rng.random() < 0.3,
                        complexity=assess(prompt).score,
                        request_fingerprint=hashlib.sha256(
                            orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
                        ).hexdigest(),
                        created_at=end - timedelta(days=day, seconds=rng.randint(60, 86_399)),
                    )
                )
    UsageRecord.objects.bulk_create(rows, batch_size=500)
    return len(rows)
