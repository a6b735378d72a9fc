"""The gateway, called in-process for a signed-in member: the playground and the onboarding test request.

The request runs through the same consumer as ``POST /v1/chat/completions``
(input limits, PII policy, rate limits, routing, budget hold, retries and
fallbacks, usage recording), acting as one of the organization's keys chosen
by id, so the member never needs the key's secret and the call is billed and
limited exactly as that key's traffic is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from accounts.auth import KeyIdentity, identity_for_key
from muxer_project.errors import APIError
from routing.consumers import ChatCompletionsConsumer


class _InProcessChat(ChatCompletionsConsumer):
    endpoint = "playground"

    def __init__(self, identity: KeyIdentity) -> None:
        super().__init__()
        self._identity = identity

    async def identify(self) -> KeyIdentity:
        return self._identity


@dataclass
class GatewayReply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error_message(self) -> str:
        if self.status < 400:
            return ""
        try:
            return str(self.json()["error"]["message"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return f"The gateway answered {self.status}."


async def chat(
    *,
    organization_id: int,
    key_id: int,
    payload: dict[str, Any],
    on_chunk: Callable[[bytes], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    headers: dict[str, str] | None = None,
) -> GatewayReply:
    """Send ``payload`` as key ``key_id`` of the organization; ``on_chunk`` sees each body part as it is sent.

    Setting ``stop`` acts as a client disconnect: the upstream call is cancelled and usage so far recorded.
    """
    reply = GatewayReply()
    try:
        identity = await identity_for_key(organization_id=organization_id, key_id=key_id)
    except APIError as exc:
        reply.status, reply.body = exc.status, exc.body_bytes()
        return reply
    body = orjson.dumps(payload)
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await (stop or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    parts: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                parts.append(chunk)
                if on_chunk is not None:
                    await on_chunk(chunk)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
        ],
        "client": ("console", 0),
    }
    await _InProcessChat(identity)(scope, receive, send)  # type: ignore[arg-type]
    reply.body = b"".join(parts)
    return reply
