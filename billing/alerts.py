"""Budget alerts: which thresholds a settlement crossed, and their delivery.

The budget engine calls ``thresholds_crossed`` after a settlement moved a
budget's spend; for each threshold passed it enqueues ``budget_alert_deliver``.
The task records a ``BudgetAlert``: its unique (budget, period_start,
threshold) is what makes a threshold fire once per period, however many
workers race. The worker that creates the row also creates the console
notification; email and webhook are each claimed through their ``*_sent_at``
field before they go out, so a redelivered or duplicated task never sends
either twice. A failed send gives its claim back for the task's retry. The
cost of the claim: a worker killed between claiming and sending loses that
email (a webhook claim expires after ``WEBHOOK_CLAIM_SECONDS`` and is sent
again); receivers dedupe webhooks on the body's ``id``.

Webhooks are signed like Stripe's: ``X-Muxer-Signature: sha256=<hex>`` is the
HMAC-SHA256, keyed with the organization's webhook secret, of
``"<X-Muxer-Timestamp>.<raw body>"``. Receivers should check it with a
constant-time compare and refuse old timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import httpx
import orjson
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Membership, Organization, Role
from audit.services import audit_event_record

from .models import Budget, BudgetAlert, Notification

logger = logging.getLogger(__name__)

ALERT_KIND = "budget.threshold_crossed"
SIGNATURE_HEADER = "X-Muxer-Signature"
TIMESTAMP_HEADER = "X-Muxer-Timestamp"
WEBHOOK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# A webhook claimed by a worker that died mid-request may be claimed again after this.
WEBHOOK_CLAIM_SECONDS = 300
SENDING = "sending"
# Answers worth trying again later; any other failure is final.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


# --- crossing (the settlement path) ---------------------------------------------------------


def thresholds_between(
    thresholds: Iterable[int], limit_usd: Decimal, before_usd: Decimal, after_usd: Decimal
) -> list[int]:
    """The thresholds (percents of ``limit_usd``) that spend passed going from ``before_usd`` to ``after_usd``.

    Pure arithmetic, no I/O. A threshold is passed when spend reaches it: 80% of
    $10 fires at $8.00 exactly. With a zero limit every threshold fires at the
    first spend.
    """
    if after_usd <= before_usd:
        return []
    wanted = {int(t) for t in thresholds}
    if limit_usd <= 0:
        return sorted(wanted) if before_usd <= 0 < after_usd else []
    return sorted(t for t in wanted if before_usd * 100 < t * limit_usd <= after_usd * 100)


def thresholds_crossed(
    budget_id: int,
    period_start: datetime,
    before_usd: Decimal,
    after_usd: Decimal,
    *,
    thresholds: Sequence[int] | None = None,
    limit_usd: Decimal | None = None,
) -> list[int]:
    """Enqueue ``budget_alert_deliver`` for each threshold the spend crossed; returns them.

    With ``thresholds`` and ``limit_usd`` (the budget's, as the hot path holds
    them) nothing touches the database or the broker unless a threshold was
    crossed; without them the budget is read once. Enqueueing waits for the
    surrounding transaction to commit, and never raises: an alert that cannot
    be queued is logged, and the settlement goes on.
    """
    if thresholds is None or limit_usd is None:
        row = Budget.objects.filter(pk=budget_id).values_list("alert_thresholds", "limit_usd").first()
        if row is None:
            return []
        thresholds, limit_usd = row[0] or [], row[1]
    crossed = thresholds_between(thresholds, limit_usd, before_usd, after_usd)
    for threshold in crossed:
        transaction.on_commit(partial(_enqueue, budget_id, period_start, threshold, after_usd))
    return crossed


def _enqueue(budget_id: int, period_start: datetime, threshold: int, spent_usd: Decimal) -> None:
    from .tasks import budget_alert_deliver

    try:
        budget_alert_deliver.delay(budget_id, period_start.isoformat(), threshold, str(spent_usd))
    except Exception:
        logger.exception("budget %s: the %s%% alert could not be queued", budget_id, threshold)


# --- recording and delivery (the worker) ------------------------------------------------------


def money(amount: Decimal) -> str:
    """Dollars for people: cents, or more places for amounts under a cent."""
    if amount == 0 or abs(amount) >= Decimal("0.01"):
        return f"${amount:,.2f}"
    return f"${amount:.6f}"


def alert_title(budget: Budget, threshold: int) -> str:
    label = budget.name or f"{budget.get_period_display().lower()} {budget.get_scope_display().lower()} budget"
    return f"Budget '{label}' reached {threshold}% of {money(budget.limit_usd)}"


def alert_text(budget: Budget, alert: BudgetAlert) -> str:
    what = f"{budget.get_period_display().lower()} {budget.get_scope_display().lower()} budget"
    if budget.model:
        what += f" for {budget.model}"
    lines = [
        f"{budget.organization.name} has spent {money(alert.spent_usd)} of its {what} "
        f"'{budget.name or budget.pk}' ({money(budget.limit_usd)}), passing the {alert.threshold}% alert.",
        f"The period began {alert.period_start:%Y-%m-%d %H:%M} UTC.",
    ]
    if budget.hard_limit:
        lines.append("Requests that would take spend past the limit are refused until the next period.")
    else:
        lines.append("This budget only alerts; requests are not refused.")
    return "\n\n".join(lines) + "\n"


@transaction.atomic
def budget_alert_record(
    *, budget: Budget, period_start: datetime, threshold: int, spent_usd: Decimal
) -> tuple[BudgetAlert, bool]:
    """The alert for one threshold in one period, and whether this call created it.

    Only the creating call writes the console notification and the audit
    event, in the same transaction, so there is exactly one of each however
    many workers race on the unique constraint.
    """
    alert, created = BudgetAlert.objects.get_or_create(
        budget=budget, period_start=period_start, threshold=threshold, defaults={"spent_usd": spent_usd}
    )
    if created:
        notification = Notification.objects.create(
            organization=budget.organization,
            kind=ALERT_KIND,
            title=alert_title(budget, threshold),
            body=alert_text(budget, alert),
            data={
                "budget_id": budget.pk,
                "alert_id": alert.pk,
                "threshold": threshold,
                "spent_usd": f"{spent_usd:.10f}",
                "limit_usd": f"{budget.limit_usd:.10f}",
                "period_start": period_start.isoformat(),
            },
        )
        audit_event_record(
            action="budget.threshold_crossed",
            organization=budget.organization,
            target_type="budget",
            target_id=budget.pk,
            metadata={"threshold": threshold, "spent_usd": str(spent_usd), "period_start": period_start.isoformat()},
        )
        transaction.on_commit(partial(alert_announce, notification, threshold))
    return alert, created


def alert_recipients(organization: Organization) -> list[str]:
    """The organization's alert address, or else its owners' addresses."""
    if organization.alert_email:
        return [organization.alert_email]
    owners = Membership.objects.filter(organization=organization, role=Role.OWNER, user__is_active=True)
    return sorted({email for email in owners.values_list("user__email", flat=True) if email})


def _email(budget: Budget, alert: BudgetAlert) -> str:
    recipients = alert_recipients(budget.organization)
    if not recipients:
        return "no recipients"
    claimed = BudgetAlert.objects.filter(pk=alert.pk, email_sent_at__isnull=True).update(email_sent_at=timezone.now())
    if not claimed:
        return "already sent"
    subject = f"[ModelMuxer] {budget.organization.name}: {alert_title(budget, alert.threshold)}"
    try:
        send_mail(subject, alert_text(budget, alert), None, recipients, fail_silently=False)
    except Exception:
        # Give the claim back, so that the retry sends it.
        BudgetAlert.objects.filter(pk=alert.pk).update(email_sent_at=None)
        logger.warning("budget %s: the %s%% alert email failed", budget.pk, alert.threshold, exc_info=True)
        return "failed"
    return "sent"


def webhook_body(budget: Budget, alert: BudgetAlert) -> bytes:
    return orjson.dumps(
        {
            "id": alert.pk,
            "type": ALERT_KIND,
            "organization": budget.organization.slug,
            "budget": {
                "id": budget.pk,
                "name": budget.name,
                "scope": budget.scope,
                "period": budget.period,
                "limit_usd": f"{budget.limit_usd:.10f}",
            },
            "threshold": alert.threshold,
            "spent_usd": f"{alert.spent_usd:.10f}",
            "period_start": alert.period_start.isoformat(),
            "created_at": alert.created_at.isoformat(),
        }
    )


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Muxer-Signature`` value for a body sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_signature_valid(
    secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_seconds: int = 300, now: float | None = None
) -> bool:
    """What a receiver checks: the signature, in constant time, on a timestamp no older than the tolerance."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - sent) > tolerance_seconds:
        return False
    return hmac.compare_digest(webhook_signature(secret, timestamp, body), signature)


def _webhook(budget: Budget, alert: BudgetAlert) -> tuple[str, bool]:
    """Post the alert; returns (outcome, worth retrying)."""
    organization = budget.organization
    if not organization.webhook_url:
        return "not configured", False
    if not organization.webhook_secret:
        # An unsigned alert could be forged by anyone who learns the URL; refuse to teach receivers to accept one.
        BudgetAlert.objects.filter(pk=alert.pk, webhook_sent_at__isnull=True).update(
            webhook_status="not sent: no webhook secret"
        )
        return "no secret", False
    now = timezone.now()
    unclaimed = Q(webhook_sent_at__isnull=True) | Q(
        webhook_status=SENDING, webhook_sent_at__lt=now - timedelta(seconds=WEBHOOK_CLAIM_SECONDS)
    )
    claimed = BudgetAlert.objects.filter(unclaimed, pk=alert.pk).update(webhook_sent_at=now, webhook_status=SENDING)
    if not claimed:
        return "already sent", False
    body = webhook_body(budget, alert)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "ModelMuxer-Webhooks/1",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: webhook_signature(organization.webhook_secret, timestamp, body),
    }
    try:
        response = httpx.post(
            organization.webhook_url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT, follow_redirects=False
        )
    except httpx.HTTPError as exc:
        # The exception's text can carry the URL, which may hold a token: log its kind only.
        status, retry = f"error: {type(exc).__name__}", True
    else:
        if response.is_success:
            BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status=str(response.status_code))
            return "sent", False
        status = f"HTTP {response.status_code}"
        retry = response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES
    BudgetAlert.objects.filter(pk=alert.pk).update(webhook_sent_at=None, webhook_status=status)
    logger.warning("budget %s: the %s%% alert webhook failed (%s)", budget.pk, alert.threshold, status)
    return "failed", retry


@dataclass(frozen=True)
class AlertDelivery:
    alert_id: int
    created: bool
    email: str
    webhook: str
    retry: bool

    def summary(self) -> dict[str, Any]:
        return {"alert": self.alert_id, "created": self.created, "email": self.email, "webhook": self.webhook}


def budget_alert_send(*, budget: Budget, period_start: datetime, threshold: int, spent_usd: Decimal) -> AlertDelivery:
    """Record the alert (once per period) and deliver whatever has not gone out yet.

    Safe to run any number of times for the same alert: each channel is sent at
    most once. ``retry`` says whether a channel failed in a way worth retrying.
    """
    alert, created = budget_alert_record(
        budget=budget, period_start=period_start, threshold=threshold, spent_usd=spent_usd
    )
    email = _email(budget, alert)
    webhook, webhook_retry = _webhook(budget, alert)
    return AlertDelivery(
        alert_id=alert.pk, created=created, email=email, webhook=webhook, retry=webhook_retry or email == "failed"
    )


def alert_announce(notification: Notification, threshold: int) -> None:
    """Show a new alert on the organization's open console pages (never raises)."""
    try:
        from console.live import alert_recorded

        alert_recorded(
            organization_id=notification.organization_id,
            title=notification.title,
            threshold=threshold,
            notification_id=notification.pk,
        )
    except Exception:  # the alert is recorded; a live update is only a courtesy
        logger.warning("live budget alert update failed", exc_info=True)
