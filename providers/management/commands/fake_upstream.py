from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from providers.fake_upstream import serve


class Command(BaseCommand):
    help = "Run the fake OpenAI-compatible upstream used in development, tests and benchmarks."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument("--latency-ms", type=float, default=0.0)
        parser.add_argument("--workers", type=int, default=1)

    def handle(self, *args: Any, **options: Any) -> None:
        serve(options["host"], options["port"], latency_ms=options["latency_ms"], workers=options["workers"])
