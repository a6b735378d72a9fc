"""Audit events as CSV and JSON Lines: one writer for the API, the console's links and the admin."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async

from .models import AuditEvent

COLUMNS = (
    "id", "created_at", "organization_id", "actor_id", "action", "target_type", "target_id",
    "ip", "user_agent", "request_id", "metadata", "before", "after", "prev_hash", "hash",
)  # fmt: skip
FORMATS: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/jsonl; charset=utf-8",
}


def event_record(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "created_at": event.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "organization_id": event.organization_id,
        "actor_id": event.actor_id,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "metadata": event.metadata,
        "before": event.before,
        "after": event.after,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return f"'{value}"  # never a spreadsheet formula
    return value


def csv_lines(events: Iterable[AuditEvent], *, header: bool = False) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    for event in events:
        record = event_record(event)
        writer.writerow([_cell(record[column]) for column in COLUMNS])
    return buffer.getvalue().encode()


def jsonl_lines(events: Iterable[AuditEvent], *, header: bool = False) -> bytes:
    return "".join(json.dumps(event_record(e), ensure_ascii=False) + "\n" for e in events).encode()


WRITERS: dict[str, Callable[..., bytes]] = {"csv": csv_lines, "jsonl": jsonl_lines}


def export_name(stem: str, fmt: str, now: datetime) -> str:
    return f"audit-{stem}-{now:%Y%m%d-%H%M%S}.{fmt}"


def stream(fmt: str, pages: Iterator[list[AuditEvent]]) -> Iterator[bytes]:
    write = WRITERS[fmt]
    if head := write([], header=True):
        yield head
    for page in pages:
        yield write(page)


def _next_page(pages: Iterator[list[AuditEvent]]) -> list[AuditEvent] | None:
    return next(pages, None)


async def stream_async(fmt: str, pages: Iterator[list[AuditEvent]]) -> AsyncIterator[bytes]:
    """Under ASGI each page is read on a database thread, so a long export streams, not gathered first."""
    write = WRITERS[fmt]
    if head := write([], header=True):
        yield head
    while True:
        page = await sync_to_async(_next_page)(pages)
        if page is None:
            return
        yield write(page)
