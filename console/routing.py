"""The console's WebSocket routes (mounted by ``muxer_project.asgi``)."""

from __future__ import annotations

from django.urls import URLPattern, path

from .consumers import OrgEventsConsumer, PlaygroundConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/console/<slug:org>/playground/", PlaygroundConsumer.as_asgi(), name="ws-console-playground"),
    path("ws/console/<slug:org>/events/", OrgEventsConsumer.as_asgi(), name="ws-console-events"),
]
