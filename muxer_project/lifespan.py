"""ASGI lifespan: close the shared outbound HTTP client when a worker stops."""

from __future__ import annotations

from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable


class LifespanApp:
    async def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        from providers.http import close_http_client

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await close_http_client()
                await send({"type": "lifespan.shutdown.complete"})
                return
