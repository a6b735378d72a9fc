"""The wizard's first request: one chat completion through the real gateway, as the key just created."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from asgiref.sync import async_to_sync

from . import gateway

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FirstReply:
    status: int
    answer: str = ""
    model: str = ""
    route_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: Decimal | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _decimal(value: str | None) -> Decimal | None:
    try:
        return Decimal(value) if value else None
    except InvalidOperation:
        return None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) else None


def first_request_send(*, organization_id: int, key_id: int, text: str) -> FirstReply:
    """Send ``text`` to ``auto`` as key ``key_id``; the answer, or the gateway's error message (never an exception)."""
    payload = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    try:
        reply = async_to_sync(gateway.chat)(organization_id=organization_id, key_id=key_id, payload=payload)
    except Exception as exc:  # the page shows a message instead of a 500
        logger.exception("onboarding test request failed (%s)", type(exc).__name__)
        return FirstReply(status=502, error="The test request failed unexpectedly; try again in a moment.")
    if reply.status >= 400 or reply.status == 0:
        return FirstReply(status=reply.status, error=reply.error_message or "The gateway did not answer.")
    try:
        body = reply.json()
        answer = str(body["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        return FirstReply(status=502, error="The gateway's answer could not be read.")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return FirstReply(
        status=reply.status,
        answer=answer,
        model=reply.headers.get("x-muxer-model", ""),
        route_reason=reply.headers.get("x-muxer-route-reason", ""),
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        total_tokens=_count(usage.get("total_tokens")),
        cost_usd=_decimal(reply.headers.get("x-muxer-cost-usd")),
    )
