"""The console's WebSocket routes (mounted by ``muxer_project.asgi``)."""

from __future__ import annotations

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
