"""Shared harness for the in-process proxy tests: post a request, read usage, parse SSE."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.conf import settings
from django.db import connections

from audit.models import AuditEvent
from billing.models import UsageRecord
from billing.usage import usage_drain
from muxer_project.asgi import application
from tests.conftest import FakeUpstream

T = TypeVar("T")
PATH = "/v1/chat/completions"
TIMEOUT = 15.0
# "Hello gateway": 13 characters -> 4 prompt tokens; "Fake reply to: Hello gateway" -> 5 words.
HELLO = "Hello gateway"
HELLO_REPLY = "Fake reply to: Hello gateway"


# --- harness -------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.json()["error"]
        return error


def chat(content: str = HELLO, *, model: str = "fake-small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def request_headers(key: str | None, body: bytes, content_length: bool) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if content_length:
        headers.append((b"content-length", str(len(body)).encode()))
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return headers


async def post(
    body: Any,
    *,
    key: str | None,
    method: str = "POST",
    content_length: bool = True,
    authorization: bytes | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    path: str = PATH,
) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = request_headers(key, raw, content_length)
    if authorization is not None:
        headers.append((b"authorization", authorization))
    headers.extend(extra_headers or ())
    communicator = HttpCommunicator(application, method, path, body=raw, headers=headers)
    response = await communicator.get_response(timeout=TIMEOUT)
    # The consumer records usage after the response is complete; let it finish.
    await communicator.wait(timeout=TIMEOUT)
    names = [name.decode() for name, _ in response["headers"]]
    assert len(names) == len(set(names)), f"duplicate response headers: {names}"
    return Reply(
        status=response["status"],
        headers={name.decode(): value.decode() for name, value in response["headers"]},
        body=response["body"],
    )


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ORM work off the event loop, and leave no connection open behind it."""

    def run() -> T:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return await sync_to_async(run)()


def _drained_usage() -> list[UsageRecord]:
    if settings.REDIS_URL:
        while usage_drain(block_ms=0):
            pass
    return list(UsageRecord.objects.order_by("id"))


async def usage_rows() -> list[UsageRecord]:
    """Every usage row, after moving whatever the consumer put on this test's stream into the database."""
    return await in_thread(_drained_usage)


async def audit_count() -> int:
    return await in_thread(AuditEvent.objects.count)


async def upstream_stats(upstream: FakeUpstream) -> dict[str, Any]:
    return await asyncio.to_thread(upstream.stats)


async def assert_nothing_recorded(audit_before: int) -> None:
    """No usage row, and no audit event beyond those written while setting up."""
    assert await usage_rows() == []
    assert await audit_count() == audit_before


def sse_events(body: bytes) -> list[bytes]:
    """The events of a text/event-stream body, each without its blank-line terminator."""
    assert body.endswith(b"\n\n")
    events = body[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith((b"data: ", b": ")), event
        assert b"\n" not in event, event
    return events


def data_chunks(events: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(e[len(b"data: ") :]) for e in events if e.startswith(b"data: {")]
