"""The operators' "erase" action for the user admin (mix ``UserEraseAdminMixin`` into the ``UserAdmin``)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import gdpr
from .models import User


@admin.action(description="Erase the selected users (GDPR: anonymise, keep usage and audit records)")
def erase_users(modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[User]) -> None:
    actor = request.user if isinstance(request.user, User) else None
    erased = 0
    for user in queryset.order_by("pk"):
        if actor is not None and user.pk == actor.pk:
            modeladmin.message_user(request, "You cannot erase yourself from the admin.", messages.ERROR)
            continue
        try:
            gdpr.user_erase(user=user, actor=actor)
        except gdpr.LastOwnerError as error:
            modeladmin.message_user(request, f"User {user.pk}: {error}", messages.ERROR)
            continue
        erased += 1
    if erased:
        modeladmin.message_user(request, f"Erased {erased} user(s).", messages.SUCCESS)


class UserEraseAdminMixin:
    """Adds :func:`erase_users` to a ``ModelAdmin``'s actions; only staff reach the admin at all."""

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)  # type: ignore[misc]
        if request.user.has_perm("accounts.change_user"):
            actions["erase_users"] = (erase_users, "erase_users", erase_users.short_description)  # type: ignore[attr-defined]
        return actions
