"""Audit events nobody calls a service for: sign-ins, and every change made in the Django admin.

Sign-ins are platform events (no organization). Admin changes become
``admin.added``, ``admin.changed`` or ``admin.deleted`` events from the admin's
own ``LogEntry`` rows, with the object's organization when it has one, the
change message, and the object's state: all of it when added or deleted, the
changed fields before and after when changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry, LogEntryManager
from django.contrib.auth import SESSION_KEY
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest
from django.utils.crypto import salted_hmac

from accounts.models import Organization, User

from . import context as request_context
from .models import AuditEvent
from .services import audit_event_record, login_recorded

ADMIN_ACTIONS = {ADDITION: "admin.added", CHANGE: "admin.changed", DELETION: "admin.deleted"}


# --- sign-ins ------------------------------------------------------------------------------------


def username_fingerprint(username: str) -> str:
    """A short keyed hash of an attempted username: equal attempts match, and the row names no one."""
    return salted_hmac("audit.login_failed", username.strip().lower()).hexdigest()[:16]


def on_user_logged_in(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    by_session = session is not None and str(session.get(SESSION_KEY)) == str(user.pk)
    login_recorded(user, method="session" if by_session else "token")


def on_user_logged_out(sender: Any, request: HttpRequest | None, user: User | None, **kwargs: Any) -> None:
    if user is None:
        return
    audit_event_record(action="auth.logout", organization=None, actor=user, target_type="user", target_id=user.pk)


def on_user_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    attempted = credentials.get(User.USERNAME_FIELD) or credentials.get("username")
    metadata: dict[str, Any] = {}
    target_id: int | str = ""
    if isinstance(attempted, str) and attempted:
        metadata["username_fingerprint"] = username_fingerprint(attempted)
        known = User._default_manager.filter(**{User.USERNAME_FIELD: attempted}).values_list("pk", flat=True).first()
        if known is not None:
            target_id = known
    audit_event_record(
        action="auth.login_failed",
        organization=None,
        target_type="user" if target_id else "",
        target_id=target_id,
        metadata=metadata,
    )


# --- the admin -----------------------------------------------------------------------------------


def row_state(obj: models.Model) -> dict[str, Any]:
    """The object's own columns (foreign keys as ``<name>_id``); the redactor hides the secret ones."""
    return {field.attname: field.value_from_object(obj) for field in obj._meta.concrete_fields}


def _snapshot_key(model: type[models.Model], pk: object) -> tuple[str, str]:
    return model._meta.label_lower, str(pk)


def remember_state_before_admin_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    """On the admin site, keep each row's state before it is saved, for ``admin.changed``'s before/after."""
    bound = request_context.current()
    if bound is None or not bound.is_admin or kwargs.get("raw") or instance.pk is None:
        return
    if sender in (AuditEvent, LogEntry):
        return
    key = _snapshot_key(sender, instance.pk)
    if key in bound.snapshots:
        return
    stored = sender._base_manager.using(kwargs.get("using")).filter(pk=instance.pk).first()
    if stored is not None:
        bound.snapshots[key] = row_state(stored)


def _target(entry: LogEntry) -> tuple[type[models.Model] | None, models.Model | None]:
    content_type = cast(ContentType | None, entry.content_type)
    model = content_type.model_class() if content_type else None
    if model is None or entry.object_id is None:
        return model, None
    try:
        return model, model._base_manager.filter(pk=entry.object_id).first()
    except (ValueError, TypeError, ValidationError):
        return model, None


def _organization_of(obj: models.Model | None, *, deleting: bool) -> Organization | None:
    if isinstance(obj, Organization):
        # An organization being deleted cannot be the event's organization (the row would protect it).
        return None if deleting else obj
    organization_id = getattr(obj, "organization_id", None)
    return Organization.objects.filter(pk=organization_id).first() if isinstance(organization_id, int) else None


def _change_message(entry: LogEntry) -> Any:
    """The admin's structured message (``[{"changed": {"fields": [...]}}]``), or its plain text."""
    try:
        return json.loads(entry.change_message) if entry.change_message.startswith("[") else entry.change_message
    except json.JSONDecodeError:
        return entry.change_message


def admin_entry_recorded(entry: LogEntry) -> AuditEvent:
    """Turn one admin ``LogEntry`` into an audit event."""
    model, obj = _target(entry)
    deleting = entry.action_flag == DELETION
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    if obj is not None:
        state = row_state(obj)
        if entry.action_flag == ADDITION:
            after = state
        elif deleting:
            before = state
        else:
            bound = request_context.current()
            old = bound.snapshots.pop(_snapshot_key(type(obj), obj.pk), None) if bound else None
            if old is not None:
                changed = [name for name, value in state.items() if old.get(name) != value]
                before = {name: old.get(name) for name in changed}
                after = {name: state[name] for name in changed}
    event = audit_event_record(
        action=ADMIN_ACTIONS.get(entry.action_flag, "admin.logged"),
        organization=_organization_of(obj, deleting=deleting),
        actor=cast(User, entry.user),
        target_type=model._meta.label_lower if model else "",
        target_id=entry.object_id or "",
        metadata={"object": entry.object_repr, "change": _change_message(entry)},
        before=before,
        after=after,
    )
    entry._audit_recorded = True  # type: ignore[attr-defined]
    return event


def on_log_entry_saved(sender: type[LogEntry], instance: LogEntry, created: bool, **kwargs: Any) -> None:
    if created and not kwargs.get("raw"):
        admin_entry_recorded(instance)


def _record_bulk_entries(entries: Iterable[LogEntry]) -> None:
    for entry in entries:
        if not getattr(entry, "_audit_recorded", False):
            admin_entry_recorded(entry)


def audit_bulk_admin_logging() -> None:
    """The admin logs a bulk action (deleting several objects) with ``bulk_create``, which sends no
    ``post_save``; wrap ``LogEntryManager.log_actions`` so those entries are recorded too."""
    original = LogEntryManager.log_actions
    if getattr(original, "_audited", False):
        return

    def log_actions(self: LogEntryManager, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        _record_bulk_entries([result] if isinstance(result, LogEntry) else list(result))
        return result

    log_actions._audited = True  # type: ignore[attr-defined]
    LogEntryManager.log_actions = log_actions  # type: ignore[method-assign]
