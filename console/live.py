"""Live console updates: events sent to an organization's channel group, which its open pages listen to.

Publishers call :func:`publish` from wherever they run (the usage writer, a
worker thread, a Celery task, an event loop) and it never raises nor waits on
the listeners: an update that cannot go out is logged and dropped, because the
page's next load shows the truth anyway.

The Redis channel layer is reachable from any thread and process. The
in-memory layer (the default without Redis) only reaches consumers in this
process, and its queues belong to the event loop that serves the WebSockets,
so a publish from another thread is handed to that loop, which each consumer
records when it connects. Events carry figures only, never a secret.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from muxer_project.redis import redis_state

logger = logging.getLogger(__name__)

# The consumers' handler for every live event (``type`` of the group message).
HANDLER = "org.event"

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def org_group(organization_id: int) -> str:
    return f"org-{organization_id}"


def remember_loop() -> None:
    """Called by a consumer on connect (inside the loop that serves the WebSockets)."""
    global _loop
    with _loop_lock:
        _loop = asyncio.get_running_loop()


def _serving_loop() -> asyncio.AbstractEventLoop | None:
    with _loop_lock:
        loop = _loop
    if loop is None or loop.is_closed():
        return None
    return loop


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _log_failure(future: Any) -> None:
    try:
        exception = future.exception()
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a cancelled or vanished future: nothing to report
        return
    if exception is not None:
        logger.warning("a live console event could not be sent (%s)", type(exception).__name__)


def publish(organization_id: int, event: Mapping[str, Any]) -> None:
    """Send ``event`` (JSON-ready, with its own ``type``) to the organization's open console pages."""
    if not redis_state.up:
        return  # the channel layer's Redis is down in this process: a frozen one would hold the writer
    try:
        _publish(org_group(organization_id), {"type": HANDLER, "event": dict(event)})
    except Exception as exc:  # noqa: BLE001 - never let an update break the write that caused it
        logger.warning("a live console event could not be sent (%s)", type(exc).__name__)


def _publish(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    running = _running_loop()
    if isinstance(layer, InMemoryChannelLayer):
        loop = _serving_loop()
        if loop is None:
            return  # no page has connected in this process: nobody to tell
        if running is loop:
            loop.create_task(layer.group_send(group, message)).add_done_callback(_log_failure)
        else:
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop).add_done_callback(_log_failure)
        return
    if running is not None:
        running.create_task(layer.group_send(group, message)).add_done_callback(_log_failure)
    else:
        async_to_sync(layer.group_send)(group, message)


# --- the events ----------------------------------------------------------------------------------


def usage_recorded(rows: Iterable[tuple[int, str, str]]) -> None:
    """One ``usage`` event per organization for new usage rows, given as (organization id, status, cost)."""
    totals: dict[int, list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for organization_id, status, cost in rows:
        entry = totals[organization_id]
        entry[0] += 1
        entry[1] += status != "ok"
        entry[2] += Decimal(cost)
    for organization_id, (requests, errors, cost) in totals.items():
        publish(organization_id, {"type": "usage", "requests": requests, "errors": errors, "cost_usd": f"{cost:f}"})


def alert_recorded(*, organization_id: int, title: str, threshold: int, notification_id: int) -> None:
    publish(
        organization_id,
        {"type": "budget_alert", "title": title, "threshold": threshold, "notification_id": notification_id},
    )
