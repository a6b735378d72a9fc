"""The usage ledger's intake.

The proxy never writes usage rows itself on the hot path. With Redis, each
request appends one event to a Redis stream (one round trip) and the usage
writer (``manage.py usage_writer``) moves events into PostgreSQL in batches,
acknowledging them only after the rows are committed; events a crashed writer
had claimed are reclaimed after a minute. Rows are keyed by request id, so a
re-delivered event never counts twice. Without Redis (the embedded default),
events are written straight to the database in a worker thread.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NotRequired, TypedDict

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DataError, IntegrityError, close_old_connections, transaction
from django.db.models import Q

from accounts.models import APIKey
from muxer_project import metrics
from muxer_project.redis import async_redis, blocking_redis, redis_state, sync_redis

from .models import UsageRecord
from .request_log import request_logs_store

logger = logging.getLogger(__name__)

GROUP = "usage-writers"


class UsageEvent(TypedDict):
    request_id: str
    organization_id: int
    api_key_id: int
    team_id: int | None
    user_id: int | None
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    usage_estimated: bool
    cost_usd: str
    latency_ms: int
    status: str
    http_status: int
    error_code: str
    stream: bool
    created_at: float
    attempt: NotRequired[int]
    route_strategy: NotRequired[str]
    route_reason: NotRequired[str]
    prompt_features: NotRequired[list[list[float]] | None]
    complexity: NotRequired[float | None]
    request_fingerprint: NotRequired[str]
    pii_detections: NotRequired[dict[str, int] | None]
    cache_hit: NotRequired[bool]
    # The request's and response's bodies, PII masked, for an organization that keeps them.
    request_log: NotRequired[dict[str, Any] | None]


def usage_write_batch(events: list[UsageEvent]) -> int:
    """Insert the events' rows (skipping request ids already stored) and touch the keys' last use."""
    if not events:
        return 0
    rows = [
        UsageRecord(
            request_id=e["request_id"],
            organization_id=e["organization_id"],
            api_key_id=e["api_key_id"],
            team_id=e["team_id"],
            user_id=e["user_id"],
            model=e["model"],
            provider=e["provider"],
            input_tokens=e["input_tokens"],
            output_tokens=e["output_tokens"],
            cached_input_tokens=e["cached_input_tokens"],
            reasoning_tokens=e["reasoning_tokens"],
            usage_estimated=e["usage_estimated"],
            cost_usd=Decimal(e["cost_usd"]),
            latency_ms=e["latency_ms"],
            status=e["status"],
            http_status=e["http_status"],
            error_code=e["error_code"],
            stream=e["stream"],
            attempt=e.get("attempt", 1),
            route_strategy=e.get("route_strategy", ""),
            route_reason=e.get("route_reason", "")[:255],
            prompt_features=e.get("prompt_features"),
            complexity=e.get("complexity"),
            request_fingerprint=e.get("request_fingerprint", ""),
            pii_detections=e.get("pii_detections"),
            cache_hit=e.get("cache_hit", False),
            created_at=datetime.fromtimestamp(e["created_at"], tz=UTC),
        )
        for e in events
    ]
    last_used: dict[int, datetime] = defaultdict(lambda: datetime.min.replace(tzinfo=UTC))
    for row in rows:
        last_used[row.api_key_id] = max(last_used[row.api_key_id], row.created_at)
    with transaction.atomic():
        UsageRecord.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
        # Kept bodies go in with their rows or not at all; the usage ids come back from a lookup,
        # since an insert that ignores conflicts returns none.
        request_logs_store(events)
        for key_id, used_at in last_used.items():
            APIKey.objects.filter(pk=key_id).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=used_at)).update(
                last_used_at=used_at
            )
        transaction.on_commit(lambda: usage_announce(rows))
    return len(rows)


def _write_now(event: UsageEvent) -> None:
    try:
        usage_write_batch([event])
    finally:
        close_old_connections()


async def usage_emit(event: UsageEvent) -> None:
    """Hand one usage event to the ledger. Falls back to a direct write while Redis is down.

    An append that timed out against a frozen Redis may still land once it
    resumes; the writer then meets a request id already stored and skips it.
    """
    _count(event)
    if settings.REDIS_URL:
        if redis_state.usable():
            try:
                await async_redis().xadd(settings.MUXER_USAGE_STREAM, {"e": orjson.dumps(event)})
                return
            except Exception as exc:  # noqa: BLE001 - any Redis failure: keep the record by writing it directly
                redis_state.failed("usage_stream", exc)
                logger.warning(
                    "usage stream unavailable (%s); writing usage %s directly", type(exc).__name__, event["request_id"]
                )
        redis_state.fallback("usage_stream")
    await sync_to_async(_write_now, thread_sensitive=False)(event)


def _count(event: UsageEvent) -> None:
    """The ledger's tokens and cost as Prometheus counters (every path that bills passes here)."""
    org, model, provider = str(event["organization_id"]), event["model"], event["provider"]
    if event["input_tokens"]:
        metrics.tokens.labels(org, model, provider, "input").inc(event["input_tokens"])
    if event["output_tokens"]:
        metrics.tokens.labels(org, model, provider, "output").inc(event["output_tokens"])
    cost = Decimal(event["cost_usd"])
    if cost:
        metrics.cost_usd.labels(org, model, provider).inc(float(cost))


def _ensure_group() -> None:
    try:
        sync_redis().xgroup_create(settings.MUXER_USAGE_STREAM, GROUP, id="0", mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def usage_drain(*, batch_size: int = 500, block_ms: int = 1000, reclaim_idle_ms: int = 60_000) -> int:
    """Move one batch of events from the Redis stream into the database. Returns rows handled."""
    client = blocking_redis(block_ms / 1000) if block_ms else sync_redis()
    stream = settings.MUXER_USAGE_STREAM
    _ensure_group()
    consumer = _consumer_name()
    claimed_reply: Any = client.xautoclaim(
        stream, GROUP, consumer, min_idle_time=reclaim_idle_ms, start_id="0-0", count=batch_size
    )
    entries: list[tuple[bytes, dict[bytes, bytes]]] = list(claimed_reply[1])
    if not entries:
        # This writer's own unacknowledged entries first: a batch whose write failed (the database was down)
        # is retried on the next pass, not a reclaim period later.
        own: Any = client.xreadgroup(GROUP, consumer, {stream: "0"}, count=batch_size)
        for _name, items in own or ():
            entries.extend(item for item in items if item[1])
    if not entries:
        response: Any = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=batch_size, block=block_ms or None)
        for _name, items in response or ():
            entries.extend(items)
    if not entries:
        return 0
    events: list[tuple[bytes, UsageEvent]] = []
    for entry_id, fields in entries:
        raw = fields.get(b"e")
        if raw is not None:
            events.append((entry_id, orjson.loads(raw)))
    rejected = _write_or_set_aside([event for _entry_id, event in events])
    ids = [entry_id for entry_id, _fields in entries]
    pipe = client.pipeline()
    for entry_id, event in events:
        if event["request_id"] in rejected:
            # Kept for an operator, out of the writer's way: retrying it could only block the events behind it.
            pipe.xadd(f"{stream}:rejected", {"e": orjson.dumps(event), "from": entry_id})
    pipe.xack(stream, GROUP, *ids)
    pipe.xdel(stream, *ids)
    acknowledged = pipe.execute()[-2]
    if acknowledged < len(ids):
        _stream_lost_under_writer(len(ids) - int(acknowledged))
    return len(entries)


def _stream_lost_under_writer(missing: int) -> None:
    """Entries this writer had just written were gone from the stream when it acknowledged them: Redis lost its
    data meanwhile (restarted without persistence). Budget counters rebuilt since then were built from a ledger
    without this batch and from an empty stream, so they are brought to the ledger now rather than at the next
    scheduled reconcile."""
    from .budgets import budget_counters_reconcile

    logger.warning("usage stream: %d written event(s) were gone when acknowledged; reconciling budgets", missing)
    metrics.store_errors.labels("redis", "usage_stream_lost").inc()
    try:
        budget_counters_reconcile()
    except Exception as exc:  # noqa: BLE001 - the scheduled reconcile corrects it later
        logger.warning("budget reconcile after a stream loss failed (%s)", type(exc).__name__)


def _write_or_set_aside(events: list[UsageEvent]) -> set[str]:
    """Write the batch; if the database refuses it (not an outage: a row it can never take, such as one whose
    key was deleted meanwhile), write its events one by one and return the request ids it refused."""
    try:
        usage_write_batch(events)
        return set()
    except (IntegrityError, DataError):
        pass
    rejected: set[str] = set()
    for event in events:
        try:
            usage_write_batch([event])
        except (IntegrityError, DataError) as exc:
            rejected.add(event["request_id"])
            metrics.store_errors.labels("database", "usage_rejected").inc()
            logger.error("usage %s refused by the database (%s); set aside", event["request_id"], type(exc).__name__)
    return rejected


def usage_pending() -> int:
    """Events in the stream not yet written (for tests and health)."""
    return int(sync_redis().xlen(settings.MUXER_USAGE_STREAM))


__all__ = ["UsageEvent", "usage_drain", "usage_emit", "usage_pending", "usage_write_batch"]


def usage_announce(rows: list[UsageRecord]) -> None:
    """Tell the organizations' open console pages about new usage (never raises, never waits on them)."""
    try:
        from console.live import usage_recorded

        usage_recorded((row.organization_id, row.status, str(row.cost_usd)) for row in rows)
    except Exception:  # live updates must never break usage writing
        logger.warning("live usage update failed", exc_info=True)
