import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from billing.usage import usage_drain

# After a failed pass (the database or Redis down), wait this long, doubling up to the maximum.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 5.0


class Command(BaseCommand):
    help = "Move usage events from the Redis stream into the database, in batches, until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Drain what is queued now, then exit.")
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument(
            "--linger-ms",
            type=int,
            default=250,
            help="After a partial batch, wait this long so the next is fuller: one commit per batch, not per event.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.REDIS_URL:
            self.stdout.write("No REDIS_URL: the gateway writes usage directly; nothing to do.")
            return
        total = 0
        failures = 0
        while True:
            try:
                moved = usage_drain(batch_size=options["batch_size"], block_ms=0 if options["once"] else 1000)
            except Exception as exc:  # noqa: BLE001 - keep the writer alive through Redis/DB outages
                # Nothing was acknowledged: the batch stays in the stream and is written on a later pass. A
                # connection the database dropped is not reused; the next pass opens a new one.
                connections.close_all()
                failures += 1
                delay = min(BACKOFF_FIRST_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS)
                self.stderr.write(f"usage writer: {type(exc).__name__}: {exc}; retrying in {delay:g} s")
                time.sleep(delay)
                continue
            if failures:
                self.stderr.write(f"usage writer: writing again after {failures} failed attempt(s)")
                failures = 0
            total += moved
            if options["once"] and moved == 0:
                self.stdout.write(f"usage writer: {total} events written")
                return
            if moved < options["batch_size"] and not options["once"]:
                time.sleep(options["linger_ms"] / 1000)
