"""The opt-in request log: each usage record's request and response bodies, PII masked, kept for a while.

``request_log_bodies`` prepares the bodies on the proxy path (they travel in the usage
event), ``usage_write_batch`` stores them beside their usage rows, and
``request_log_purge`` deletes them after each organization's retention.

Masking ignores the organization's PII policy: the policy decides what leaves for a
provider, while these bodies are data at rest, so every entity type the detector knows
is replaced (``[EMAIL_1]``; one number per distinct value across request and answer,
so a reader can still tell two addresses apart). Every string in the body is masked,
object keys included, since PII can sit anywhere (``user``, tool call arguments,
metadata). Numbers are left as they are.

Each body is bounded to ``MUXER_REQUEST_LOG_MAX_BYTES`` of JSON: long strings are cut,
the longest first, and end with ``…[truncated N characters]``; a body still too large
(thousands of short values) is replaced by ``{"truncated": true, "bytes": <its size>,
"head": "<the start of its masked JSON>"}``. Inline data (``data:...;base64,...``) is
never kept, only its length.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from accounts.models import Organization
from billing.models import RequestLog, UsageRecord
from routing.pii import PLACEHOLDER, PLACEHOLDER_LABELS, Finding, PIIEntity, scan

if TYPE_CHECKING:
    from billing.usage import UsageEvent

TRUNCATION_MARKER = "…[truncated {count} characters]"
DATA_URL_MARKER = "…[{count} characters of inline data not kept]"
# Scanned beyond a string's cut so a value straddling the cut is found whole and masked, not left half shown.
_SCAN_MARGIN = 4096
# A string cut shorter than this is not worth keeping apart from the marker; below it the body falls back to a head.
_MIN_STRING_LIMIT = 64


# --- masking ---------------------------------------------------------------------------------------


class _LogMasker:
    """Placeholders for one request's log: one per distinct value, never one already in the bodies."""

    def __init__(self, reserved: set[str]) -> None:
        self._reserved = reserved
        self._by_value: dict[tuple[PIIEntity, str], str] = {}
        self._next: dict[str, int] = {}

    def placeholder(self, entity: PIIEntity, value: str) -> str:
        existing = self._by_value.get((entity, value))
        if existing is None:
            label = PLACEHOLDER_LABELS[entity]
            number = self._next.get(label, 1)
            while f"[{label}_{number}]" in self._reserved:
                number += 1
            self._next[label] = number + 1
            existing = self._by_value[(entity, value)] = f"[{label}_{number}]"
        return existing

    def mask(self, text: str, limit: int | None) -> str:
        """``text`` masked, and cut to about ``limit`` characters (never inside a placeholder) with a marker."""
        if text.startswith("data:") and ";base64," in text[:256] and len(text) > 256:
            head = text[: text.index(",") + 1]
            return head + DATA_URL_MARKER.format(count=len(text) - len(head))
        cut = limit is not None and len(text) > limit
        window = text[: limit + _SCAN_MARGIN] if cut and limit is not None else text
        findings: list[Finding] = scan(window)
        if not findings and not cut:
            return text
        stop = limit if cut and limit is not None else len(window)
        pieces: list[str] = []
        cursor = 0
        for finding in findings:
            if finding.start >= stop:
                break
            pieces.append(window[cursor : finding.start])
            pieces.append(self.placeholder(finding.entity, window[finding.start : finding.end]))
            cursor = finding.end
        if cursor < stop:
            pieces.append(window[cursor:stop])
            cursor = stop
        if cursor < len(text):
            pieces.append(TRUNCATION_MARKER.format(count=len(text) - cursor))
        return "".join(pieces)


def _strings(value: Any, found: list[str]) -> None:
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            found.append(str(key))
            _strings(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _strings(item, found)


def _masked(value: Any, masker: _LogMasker, limit: int | None) -> Any:
    if isinstance(value, str):
        return masker.mask(value, limit)
    if isinstance(value, dict):
        return {masker.mask(str(key), None): _masked(item, masker, limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item, masker, limit) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else would not survive the trip as JSON anyway; keep its text, masked.
    return masker.mask(str(value), limit)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _string_limit(lengths: list[int], budget: int) -> int | None:
    """The largest per-string length that fits ``budget`` characters across all the strings (None: all fit)."""
    if sum(lengths) <= budget:
        return None
    remaining = budget
    ordered = sorted(lengths)
    for index, length in enumerate(ordered):
        share = remaining // (len(ordered) - index)
        if length > share:
            return share
        remaining -= length
    return None


def _bounded(value: Any, masker: _LogMasker, max_bytes: int) -> Any:
    found: list[str] = []
    _strings(value, found)
    lengths = [len(s) for s in found]
    size = _json_size(value)
    limit = None
    if size > max_bytes:
        # What is not string content (syntax, numbers, keys' quotes) stays; strings share the rest.
        overhead = size - sum(lengths)
        limit = _string_limit(lengths, max(max_bytes - overhead, 0))
        if limit is not None:
            limit = max(limit, _MIN_STRING_LIMIT)
    masked = _masked(value, masker, limit)
    size = _json_size(masked)
    # Markers, placeholders and multi-byte characters can still overshoot: take the excess off each cut
    # string (a character is at least a byte), then halve if that does not converge. Each try masks the
    # original again (scanning at most the new limit per string), so every marker counts right.
    tries = 0
    while size > max_bytes and limit is not None and limit > _MIN_STRING_LIMIT:
        tries += 1
        cut = sum(1 for length in lengths if length > limit) or 1
        shorter = limit - max(-(-(size - max_bytes) // cut), 1) if tries <= 4 else limit // 2
        limit = max(shorter, _MIN_STRING_LIMIT)
        masked = _masked(value, masker, limit)
        size = _json_size(masked)
    if size > max_bytes:
        # Half the budget in bytes (cut on a character boundary), since escaping can grow it again when stored.
        text = json.dumps(masked, ensure_ascii=False).encode()
        head = text[: max(max_bytes // 2, _MIN_STRING_LIMIT)].decode(errors="ignore")
        return {"truncated": True, "bytes": size, "head": head}
    return masked


def request_log_bodies(*, request: dict[str, Any], response: dict[str, Any] | None) -> dict[str, Any]:
    """``{"request": ..., "response": ...}`` ready to keep: every PII entity masked, each body size bounded.

    The inputs are not modified. Placeholders are numbered across both bodies, so an address
    the answer repeats from the question gets the same one.
    """
    found: list[str] = []
    _strings(request, found)
    _strings(response, found)
    reserved = {p for text in found if "[" in text for p in PLACEHOLDER.findall(text)}
    masker = _LogMasker(reserved)
    max_bytes = settings.MUXER_REQUEST_LOG_MAX_BYTES
    return {
        "request": _bounded(request, masker, max_bytes),
        "response": None if response is None else _bounded(response, masker, max_bytes),
    }


# --- storing (called by usage_write_batch) ---------------------------------------------------------


def request_logs_store(events: list[UsageEvent]) -> int:
    """Store the bodies that usage events carry, beside their usage rows; call inside the rows' transaction.

    Idempotent: a re-delivered event finds its bodies stored and adds nothing. A row is matched on
    request id, attempt and organization, so bodies can never attach to another tenant's record.
    """
    carried: dict[tuple[str, int, int], dict[str, Any]] = {}
    for e in events:
        bodies = e.get("request_log")
        if isinstance(bodies, dict) and bodies.get("request") is not None:
            # The first of duplicates in one batch, as the usage insert keeps the first row.
            carried.setdefault((e["request_id"], e.get("attempt", 1), e["organization_id"]), bodies)
    if not carried:
        return 0
    rows = UsageRecord.objects.filter(
        request_id__in={key[0] for key in carried}, organization_id__in={key[2] for key in carried}
    ).values_list("id", "request_id", "attempt", "organization_id", "created_at")
    logs = []
    for usage_id, request_id, attempt, organization_id, created_at in rows:
        bodies = carried.get((request_id, attempt, organization_id))
        if bodies is None:
            continue
        logs.append(
            RequestLog(
                usage_id=usage_id,
                organization_id=organization_id,
                request_body=bodies["request"],
                response_body=bodies.get("response"),
                created_at=created_at,
            )
        )
    RequestLog.objects.bulk_create(logs, ignore_conflicts=True, batch_size=200)
    return len(logs)


_MAX_ID = 2**63 - 1


# --- reading ---------------------------------------------------------------------------------------


def request_log_for_usage(*, organization: Organization, usage_id: int) -> RequestLog | None:
    """The bodies kept for one of the organization's usage records, if any (another tenant's id: None)."""
    # An id from a URL can be any size; one no row can have is simply not found (not a database overflow).
    if not 0 < usage_id <= _MAX_ID:
        return None
    return (
        RequestLog.objects.filter(organization=organization, usage_id=usage_id)
        .select_related("usage", "usage__api_key", "usage__team")
        .first()
    )


def request_logged_usage_ids(*, organization: Organization, usage_ids: Iterable[int]) -> set[int]:
    """Which of these usage records of the organization have bodies kept (for one page of the explorer)."""
    return set(
        RequestLog.objects.filter(organization=organization, usage_id__in=list(usage_ids)).values_list(
            "usage_id", flat=True
        )
    )


# --- retention -------------------------------------------------------------------------------------

PURGE_BATCH_SIZE = 2000


@dataclass(frozen=True)
class PurgeResult:
    deleted: int = 0
    organizations: int = 0


def request_log_purge(*, now: datetime | None = None, batch_size: int = PURGE_BATCH_SIZE) -> PurgeResult:
    """Delete bodies older than their organization's ``request_log_retention_days``.

    Applies whether or not the organization still logs bodies, so turning the log off lets the
    old ones age out rather than keeping them forever. Deletes in batches, each its own short
    transaction, so a large backlog never holds a long lock.
    """
    moment = now or timezone.now()
    deleted = 0
    touched: set[int] = set()
    # One pass per distinct retention (a handful), joined on the organization rather than listing its ids.
    for days in Organization.objects.order_by().values_list("request_log_retention_days", flat=True).distinct():
        expired = RequestLog.objects.filter(
            organization__request_log_retention_days=days, created_at__lt=moment - timedelta(days=max(days, 1))
        )
        while True:
            batch = list(expired.order_by().values_list("id", "organization_id")[:batch_size])
            if not batch:
                break
            deleted += RequestLog.objects.filter(id__in=[row_id for row_id, _ in batch]).delete()[0]
            touched.update(org_id for _, org_id in batch)
    return PurgeResult(deleted=deleted, organizations=len(touched))
