"""``POST /v1/messages``: the Anthropic Messages API in front of every provider (not written yet)."""

from __future__ import annotations

from muxer_project.errors import APIError

from .consumers import RoutedConsumer


class MessagesConsumer(RoutedConsumer):
    async def handle(self, body: bytes) -> None:
        raise APIError(404, "Not available yet.", code="not_found")
