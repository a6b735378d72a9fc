"""The console's WebSockets: the playground's streamed answers, and an organization's live events.

Both take the signed-in user from the session (``AuthMiddlewareStack``) and
resolve the organization through the user's membership, as the pages do: a
non-member's socket is closed with 4404 (as if the organization did not
exist) and a role without the right with 4403.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts import selectors as account_selectors
from accounts.models import Membership, User
from accounts.permissions import Perm, role_can
from billing.pricing import cost_usd
from providers.adapters.base import Usage
from providers.catalog import get_catalog

from . import gateway, live
from .views.playground import PlaygroundRequest, playground_request

logger = logging.getLogger(__name__)

CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403
CLOSE_UNAUTHENTICATED = 4401
# How long a closed socket waits for its cancelled answer to record its usage.
STOP_GRACE_SECONDS = 10


@database_sync_to_async
def _membership(user: Any, org: str) -> Membership | None:
    if not isinstance(user, User) or not user.is_authenticated:
        return None
    return account_selectors.membership_for(user=user, organization_slug=org)


class OrgConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Resolves ``<org>`` through the session user's membership on connect; closes 4404 / 4403 otherwise."""

    perm = Perm.ORG_VIEW
    membership: Membership | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        membership = await _membership(user, self.scope["url_route"]["kwargs"]["org"])
        if membership is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if not role_can(membership.role, self.perm):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.membership = membership
        live.remember_loop()
        await self.joined()
        await self.accept()

    async def joined(self) -> None:
        """After the membership is known, before the socket is accepted."""


class OrgEventsConsumer(OrgConsumer):
    """``/ws/console/<org>/events/``: the organization's live events (new usage, budget alerts), for any member."""

    group = ""

    async def joined(self) -> None:
        assert self.membership is not None
        self.group = live.org_group(self.membership.organization_id)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Listen-only: what a page sends is ignored."""

    async def org_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])


# --- the playground ------------------------------------------------------------------------------


@dataclass
class StreamReader:
    """Reads the gateway's event stream as it arrives: text deltas, the usage chunk, the cost comment, errors."""

    buffer: bytes = b""
    usage: dict[str, Any] | None = None
    cost_usd: str | None = None
    error: dict[str, Any] | None = None
    texts: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[str]:
        """The text deltas completed by ``chunk``."""
        self.buffer += chunk
        deltas: list[str] = []
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                deltas.extend(self._line(line.strip()))
        self.texts.extend(deltas)
        return deltas

    def _line(self, line: bytes) -> list[str]:
        if line.startswith(b": x-muxer-cost-usd="):
            self.cost_usd = line.split(b"=", 1)[1].decode().strip()
            return []
        if not line.startswith(b"data:"):
            return []
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        if isinstance(chunk.get("error"), dict):
            self.error = chunk["error"]
            return []
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or ():
            text = ((choice or {}).get("delta") or {}).get("content")
            if isinstance(text, str) and text:
                out.append(text)
        return out


async def answer_cost(model_name: str, usage: dict[str, Any] | None, reported: str | None) -> str | None:
    """The answer's cost in USD: as the gateway reported it, or else its usage at the catalog's price."""
    if reported:
        try:
            return format(Decimal(reported), "f")
        except InvalidOperation:
            pass
    if usage is None:
        return None
    model = (await get_catalog()).get(model_name)
    if model is None:
        return None
    details = usage.get("prompt_tokens_details") or {}
    counted = Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
    )
    return format(cost_usd(model, counted), "f")


class PlaygroundConsumer(OrgConsumer):
    """``/ws/console/<org>/playground/``: one chat completion at a time, streamed back delta by delta.

    The page sends ``{"key_id", "model", "messages", "max_tokens"?, "temperature"?}``; the answer comes as
    ``{"type": "delta", "text"}`` messages, then ``{"type": "done", ...}`` or ``{"type": "error", ...}``.
    Closing the socket mid-answer cancels the upstream call; the usage so far is recorded.
    """

    perm = Perm.KEYS_CREATE
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event | None = None

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if self.task is not None and not self.task.done():
            await self.send_json({"type": "error", "status": 409, "message": "Wait for the current answer first."})
            return
        assert self.membership is not None
        request = await database_sync_to_async(playground_request)(self.membership, content)
        if isinstance(request, str):
            await self.send_json({"type": "error", "status": 400, "message": request})
            return
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.answer(request, self.stop))

    async def decode_json(self, text_data: str) -> Any:
        try:
            return orjson.loads(text_data)
        except orjson.JSONDecodeError:
            return None

    async def answer(self, request: PlaygroundRequest, stop: asyncio.Event) -> None:
        reader = StreamReader()

        async def forward(chunk: bytes) -> None:
            for text in reader.feed(chunk):
                if stop.is_set():
                    return
                await self.send_json({"type": "delta", "text": text})

        try:
            reply = await gateway.chat(
                organization_id=request.organization_id,
                key_id=request.key_id,
                payload={**request.payload, "stream": True, "stream_options": {"include_usage": True}},
                on_chunk=forward,
                stop=stop,
            )
        except Exception:
            logger.exception("playground answer failed")
            await self.send_json({"type": "error", "status": 500, "message": "The answer failed; try again."})
            return
        if stop.is_set():
            return  # the page went away: nobody to tell
        if reply.status >= 400:
            await self.send_json({"type": "error", "status": reply.status, "message": reply.error_message})
            return
        if reader.error is not None:
            message = str(reader.error.get("message") or "The provider failed mid-answer.")
            await self.send_json({"type": "error", "status": 502, "message": message})
            return
        model = reply.headers.get("x-muxer-model", "")
        usage = reader.usage or {}
        await self.send_json(
            {
                "type": "done",
                "model": model,
                "route_reason": reply.headers.get("x-muxer-route-reason", ""),
                "input_tokens": int(usage.get("prompt_tokens") or 0),
                "output_tokens": int(usage.get("completion_tokens") or 0),
                "cost_usd": await answer_cost(
                    model, reader.usage, reader.cost_usd or reply.headers.get("x-muxer-cost-usd")
                ),
            }
        )

    async def disconnect(self, code: int) -> None:
        if self.stop is not None:
            self.stop.set()
        if self.task is not None and not self.task.done():
            # Let the gateway cancel upstream and record the usage so far before this consumer goes.
            try:
                await asyncio.wait_for(asyncio.shield(self.task), STOP_GRACE_SECONDS)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("a cancelled playground answer did not finish in %ss", STOP_GRACE_SECONDS)
