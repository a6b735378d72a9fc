"""The hash chain that makes the audit log tamper-evident.

Each event's ``hash`` is SHA-256 over a canonical JSON form of its fields and
``prev_hash``, the hash of the event appended just before it. Appends are
serialized (:func:`chain_lock`), so the chain is one line in id order, and
:func:`chain_verify` walks it: an edited field no longer matches its hash; a
deleted, inserted or reordered event breaks a link.

The first event of the chain has an empty ``prev_hash``. Retention deletes the
oldest events as a block and records an ``audit.purged`` event whose
``anchor_hash`` is the hash of the last one deleted; the first surviving event
must link to such an anchor.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from django.db import connections

from .models import AuditEvent

HASH_VERSION = 1
PURGE_ACTION = "audit.purged"
# Any fixed number: the key of the PostgreSQL advisory lock that serializes appends.
CHAIN_LOCK_KEY = 0x6D6D_6175_6474


class ChainedEvent(Protocol):
    """The fields the hash covers (an ``AuditEvent``, or a migration's historical one)."""

    created_at: datetime
    organization_id: int | None
    actor_id: int | None
    action: str
    target_type: str
    target_id: str
    metadata: Any
    before: Any
    after: Any
    ip: str | None
    user_agent: str
    request_id: str
    prev_hash: str


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _address(ip: object) -> str | None:
    # The packed bytes: the same whichever textual form the database gives back.
    return ipaddress.ip_address(str(ip)).packed.hex() if ip else None


def _json_numbers(value: Any) -> Any:
    """Whole floats as integers: PostgreSQL's jsonb gives ``1e16`` back as ``10000000000000000``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_numbers(item) for item in value]
    return value


def canonical_form(event: ChainedEvent) -> bytes:
    body = {
        "v": HASH_VERSION,
        "created_at": _instant(event.created_at),
        "organization_id": event.organization_id,
        "actor_id": event.actor_id,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "metadata": _json_numbers(event.metadata),
        "before": _json_numbers(event.before),
        "after": _json_numbers(event.after),
        "ip": _address(event.ip),
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def event_hash(event: ChainedEvent) -> str:
    return hashlib.sha256(canonical_form(event)).hexdigest()


def chain_lock(using: str = "default") -> None:
    """Serialize appends until the current transaction ends. Call inside ``transaction.atomic``.

    PostgreSQL: a transaction-scoped advisory lock, so the next writer reads the
    last hash only after this one has committed. SQLite: its writers are
    serialized already (IMMEDIATE transactions take the write lock up front).

    The lock is held until the caller's transaction commits, so every audited
    write is serialized behind it. Services therefore record their event last,
    after taking their own row locks: locking rows after the chain lock, in an
    order another transaction takes the other way round, can deadlock on
    PostgreSQL (one of the two is aborted).
    """
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


def chain_tail(using: str = "default") -> tuple[str, datetime | None]:
    """The last event's hash and time, or ``("", None)`` for an empty log. Call under :func:`chain_lock`."""
    last = AuditEvent.objects.using(using).order_by("-id").values_list("hash", "created_at").first()
    return last if last is not None else ("", None)


# --- verification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    count: int
    first_id: int | None = None
    last_id: int | None = None
    last_hash: str = ""
    anchored: bool = False  # the chain starts where a purge ended
    broken_id: int | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_id is None

    def summary(self) -> str:
        if not self.intact:
            return f"Audit chain broken at event {self.broken_id}: {self.problem}"
        if not self.count:
            return "Audit chain intact: no events."
        start = "after a purge" if self.anchored else "from the start"
        return (
            f"Audit chain intact: {self.count} events, ids {self.first_id}-{self.last_id} ({start}); "
            f"last hash {self.last_hash}."
        )


def purge_anchors(using: str = "default") -> set[str]:
    anchors = AuditEvent.objects.using(using).filter(action=PURGE_ACTION).values_list("metadata", flat=True)
    return {m["anchor_hash"] for m in anchors if isinstance(m, dict) and isinstance(m.get("anchor_hash"), str)}


def walk(events: Iterable[AuditEvent], anchors: set[str]) -> ChainReport:
    count, first_id, anchored = 0, None, False
    previous: AuditEvent | None = None
    for event in events:
        count += 1
        if event.hash != event_hash(event):
            return ChainReport(count, first_id, broken_id=event.pk, problem="its hash does not match its contents.")
        if previous is None:
            first_id = event.pk
            anchored = event.prev_hash != ""
            if anchored and event.prev_hash not in anchors:
                return ChainReport(
                    count,
                    first_id,
                    broken_id=event.pk,
                    problem="it is the first event but links to an event that no purge removed.",
                )
        elif event.prev_hash != previous.hash:
            return ChainReport(
                count, first_id, broken_id=event.pk, problem=f"it does not link to the event before it ({previous.pk})."
            )
        previous = event
    if previous is None:
        return ChainReport(0)
    return ChainReport(count, first_id, previous.pk, previous.hash, anchored)


def chain_verify(*, using: str = "default", chunk_size: int = 2000) -> ChainReport:
    """Walk the whole chain in id order; the report names the first event that fails, if any."""
    events = AuditEvent.objects.using(using).order_by("id").iterator(chunk_size=chunk_size)
    return walk(events, purge_anchors(using))
