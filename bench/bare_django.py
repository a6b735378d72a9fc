"""Framework ceiling for the benchmark: the smallest Django ASGI app that can answer a chat call.

One ``async def`` view returning a fixed OpenAI chat-completion body; settings configured here,
no middleware, no apps, no database. Served by the same uvicorn command line as the gateway:

    .venv/bin/uvicorn bench.bare_django:application --host 127.0.0.1 --port 8000 --workers 2 \
        --loop uvloop --http httptools --no-access-log --log-level warning
"""

from __future__ import annotations

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

CHAT_COMPLETION_BODY: bytes = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"fake-small","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)


async def chat_completions(request: HttpRequest) -> HttpResponse:
    return HttpResponse(CHAT_COMPLETION_BODY, content_type="application/json")


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b'{"status":"ok"}', content_type="application/json")


urlpatterns = [
    path("v1/chat/completions", chat_completions),
    path("healthz", healthz),
]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-bare-django-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 - needs configured settings

application = get_asgi_application()
