"""Writes for budgets and console notifications, and the organization-scoped lookups the API needs."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import APIKey, Organization, Team, User
from audit.services import audit_event_record

from .models import Budget, BudgetScope, Notification

# Fields a budget keeps for life: its spend counters are kept per scope, target, model and period.
BUDGET_FIXED_FIELDS = ("scope", "team", "api_key", "user", "model", "period")
BUDGET_CHANGEABLE_FIELDS = ("name", "limit_usd", "hard_limit", "alert_thresholds", "enabled")


class BudgetDuplicateError(ValueError):
    """Another budget already covers the same scope, target, model and period."""

    def __init__(self, existing: Budget) -> None:
        super().__init__(
            f"Budget {existing.pk} already has this scope, target, model and period; change that one instead."
        )
        self.existing = existing


# --- lookups ---------------------------------------------------------------------------------


def budgets_for_org(*, organization: Organization) -> QuerySet[Budget]:
    return Budget.objects.filter(organization=organization).select_related("organization").order_by("id")


def budget_get(*, organization: Organization, budget_id: int) -> Budget | None:
    return budgets_for_org(organization=organization).filter(pk=budget_id).first()


def notifications_for_org(*, organization: Organization, unread_only: bool = False) -> QuerySet[Notification]:
    query = Notification.objects.filter(organization=organization).order_by("-created_at", "-id")
    return query.filter(read_at__isnull=True) if unread_only else query


def notification_get(*, organization: Organization, notification_id: int) -> Notification | None:
    return notifications_for_org(organization=organization).filter(pk=notification_id).first()


# --- budgets ---------------------------------------------------------------------------------


def normalized_thresholds(thresholds: Iterable[int]) -> list[int]:
    return sorted({int(t) for t in thresholds})


def _snapshot(budget: Budget) -> dict[str, Any]:
    return {
        "name": budget.name,
        "scope": budget.scope,
        "target_id": budget.team_id or budget.api_key_id or budget.user_id,
        "model": budget.model,
        "period": budget.period,
        "limit_usd": f"{budget.limit_usd:.10f}",
        "hard_limit": budget.hard_limit,
        "alert_thresholds": budget.alert_thresholds,
        "enabled": budget.enabled,
    }


@transaction.atomic
def budget_create(
    *,
    organization: Organization,
    actor: User | None,
    scope: str,
    period: str,
    limit_usd: Decimal,
    name: str = "",
    team: Team | None = None,
    api_key: APIKey | None = None,
    user: User | None = None,
    model: str = "",
    hard_limit: bool = True,
    alert_thresholds: Iterable[int] = (50, 80, 95, 100),
    enabled: bool = True,
) -> Budget:
    """Create a budget. Callers check that the target belongs to the organization; raises
    ``BudgetDuplicateError`` when another budget already covers the same ground."""
    for target in (team, api_key):
        if target is not None and target.organization_id != organization.pk:
            raise ValueError("The budget's target belongs to another organization.")
    # One writer at a time per organization, so two racing requests cannot both pass the duplicate check.
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    existing = Budget.objects.filter(
        organization=organization, scope=scope, team=team, api_key=api_key, user=user, model=model, period=period
    ).first()
    if existing is not None:
        raise BudgetDuplicateError(existing)
    budget = Budget.objects.create(
        organization=organization,
        name=name,
        scope=scope,
        team=team if scope == BudgetScope.TEAM else None,
        api_key=api_key if scope == BudgetScope.API_KEY else None,
        user=user if scope == BudgetScope.USER else None,
        model=model,
        period=period,
        limit_usd=limit_usd,
        hard_limit=hard_limit,
        alert_thresholds=normalized_thresholds(alert_thresholds),
        enabled=enabled,
    )
    audit_event_record(
        action="budget.created",
        organization=organization,
        actor=actor,
        target_type="budget",
        target_id=budget.pk,
        metadata=_snapshot(budget),
    )
    return budget


@transaction.atomic
def budget_update(*, budget: Budget, actor: User | None, **changes: Any) -> Budget:
    """Change a budget's name, limit, hard limit, thresholds or enabled flag; other fields are fixed.

    Gateways pick the change up within ``MUXER_BUDGET_CACHE_SECONDS``.
    """
    fixed = sorted(set(changes) - set(BUDGET_CHANGEABLE_FIELDS))
    if fixed:
        raise ValueError(f"These budget fields cannot be changed: {', '.join(fixed)}.")
    locked = Budget.objects.select_for_update().select_related("organization").get(pk=budget.pk)
    if "alert_thresholds" in changes:
        changes["alert_thresholds"] = normalized_thresholds(changes["alert_thresholds"])
    diff: dict[str, dict[str, Any]] = {}
    for field, new in changes.items():
        old = getattr(locked, field)
        if old != new:
            setattr(locked, field, new)
            diff[field] = {"old": old, "new": new}
    if diff:
        locked.save(update_fields=[*diff, "updated_at"])
        for values in diff.values():
            for side in ("old", "new"):
                if isinstance(values[side], Decimal):
                    values[side] = f"{values[side]:.10f}"
        audit_event_record(
            action="budget.updated",
            organization=locked.organization,
            actor=actor,
            target_type="budget",
            target_id=locked.pk,
            metadata={"changes": diff},
        )
    return locked


@transaction.atomic
def budget_delete(*, budget: Budget, actor: User | None) -> None:
    """Delete a budget and its alert history; its limit stops applying within ``MUXER_BUDGET_CACHE_SECONDS``."""
    snapshot = _snapshot(budget)
    budget_id = budget.pk
    organization = budget.organization
    budget.delete()
    audit_event_record(
        action="budget.deleted",
        organization=organization,
        actor=actor,
        target_type="budget",
        target_id=budget_id,
        metadata=snapshot,
    )


# --- notifications ---------------------------------------------------------------------------


def notification_mark_read(*, notification: Notification) -> Notification:
    """Mark a console notification read (for the whole organization); marking it again changes nothing."""
    if notification.read_at is None:
        now = timezone.now()
        Notification.objects.filter(pk=notification.pk, read_at__isnull=True).update(read_at=now)
        notification.refresh_from_db(fields=["read_at"])
    return notification
