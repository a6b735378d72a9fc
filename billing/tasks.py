"""Celery tasks of the billing app (autodiscovered). Each takes ids, loads the rows and calls a service.

The usage rollup and retention tasks live beside their services in billing/rollups.py.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from celery import Task, shared_task

# --- budget alerts (billing/alerts.py) ---------------------------------------------------------

# Webhook (or mail server) failures are retried with exponential backoff: 30 s, 1, 2, 4, 8, 16 min,
# then given up, about half an hour after the threshold was crossed.
ALERT_MAX_RETRIES = 6
ALERT_RETRY_BASE_SECONDS = 30


@shared_task(name="billing.budget_alert_deliver", bind=True, max_retries=ALERT_MAX_RETRIES, acks_late=True)
def budget_alert_deliver(
    self: Task[Any, Any], budget_id: int, period_start_iso: str, threshold: int, spent_usd: str
) -> dict[str, Any]:
    """Record a crossed threshold once per period and send its email, webhook and console notification.

    Idempotent: a redelivery or a duplicate sends nothing that already went out.
    """
    from .alerts import budget_alert_send
    from .models import Budget

    budget = Budget.objects.select_related("organization").filter(pk=budget_id).first()
    if budget is None:
        return {"alert": None, "reason": "the budget no longer exists"}
    delivery = budget_alert_send(
        budget=budget,
        period_start=datetime.fromisoformat(period_start_iso),
        threshold=int(threshold),
        spent_usd=Decimal(spent_usd),
    )
    # Eager mode (the embedded default) runs inside the request that crossed the threshold: one try only.
    if delivery.retry and not self.request.is_eager:
        raise self.retry(countdown=ALERT_RETRY_BASE_SECONDS * 2**self.request.retries)
    return delivery.summary()


# --- budget counters (billing/budgets.py) ------------------------------------------------------


@shared_task(name="billing.budget_counters_reconcile")
def budget_counters_reconcile_task() -> int:
    """Set every enabled budget's current counter to the ledger's sum (rebuilding lost ones); returns how many
    were corrected."""
    from .budgets import budget_counters_reconcile

    return budget_counters_reconcile()


# --- request log retention (billing/request_log.py) --------------------------------------------


@shared_task(name="billing.request_log_purge", acks_late=True)
def request_log_purge_task() -> dict[str, int]:
    """Delete kept request and response bodies past each organization's retention."""
    from .request_log import request_log_purge

    result = request_log_purge()
    return {"deleted": result.deleted, "organizations": result.organizations}
