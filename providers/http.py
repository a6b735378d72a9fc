"""The one shared outbound HTTP client.

httpx is the API; the transport is aiohttp's (``httpx-aiohttp``), which
measured roughly ten times faster than httpx's default transport with 50
requests in flight. One client per event loop, so connection pools are reused
across requests and never shared between loops.
"""

from __future__ import annotations

import asyncio

import httpx
from django.conf import settings
from httpx_aiohttp import AiohttpTransport

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def _build() -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.MUXER_UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.MUXER_UPSTREAM_MAX_CONNECTIONS,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        timeout=httpx.Timeout(
            settings.MUXER_UPSTREAM_TIMEOUT_SECONDS, connect=settings.MUXER_UPSTREAM_CONNECT_TIMEOUT_SECONDS
        ),
        trust_env=False,
    )


def http_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        for stale in [lp for lp in _clients if lp.is_closed()]:
            del _clients[stale]
        client = _clients[loop] = _build()
    return client


async def close_http_client() -> None:
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
