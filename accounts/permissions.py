"""Who may do what inside an organization: the one permission matrix.

Every tenant-facing surface (the management API, the console) asks
:func:`role_can` and nothing else, and the README's permission table is
generated from :data:`MATRIX` (``manage.py permission_matrix``; a test keeps
them equal). Platform operators are Django staff: the admin site is theirs
and tenant roles never open it, while staff get no tenant rights from being
staff.

An API key with the ``read`` scope acts as a viewer of its own organization
and one with the ``admin`` scope as an admin; a ``proxy`` key has no
management rights at all.
"""

from __future__ import annotations

from enum import StrEnum

from .models import Role


class Perm(StrEnum):
    ORG_VIEW = "org.view"
    ORG_UPDATE = "org.update"
    ORG_EXPORT = "org.export"
    MEMBERS_VIEW = "members.view"
    MEMBERS_MANAGE = "members.manage"
    TEAMS_MANAGE = "teams.manage"
    KEYS_VIEW = "keys.view"
    KEYS_CREATE = "keys.create"
    KEYS_MANAGE = "keys.manage"
    POLICY_VIEW = "policy.view"
    POLICY_MANAGE = "policy.manage"
    BUDGETS_VIEW = "budgets.view"
    BUDGETS_MANAGE = "budgets.manage"
    USAGE_VIEW = "usage.view"
    REQUEST_LOG_VIEW = "request_log.view"
    CREDENTIALS_MANAGE = "credentials.manage"
    AUDIT_VIEW = "audit.view"


PERM_DESCRIPTIONS: dict[Perm, str] = {
    Perm.ORG_VIEW: "See the organization, its teams and its notifications",
    Perm.ORG_UPDATE: "Change organization settings (name, time zone, alerts, PII policy, cache, request log)",
    Perm.ORG_EXPORT: "Export all of the organization's data (GDPR)",
    Perm.MEMBERS_VIEW: "List members and invitations",
    Perm.MEMBERS_MANAGE: "Invite, remove and change the role of members",
    Perm.TEAMS_MANAGE: "Create, rename and delete teams",
    Perm.KEYS_VIEW: "List API keys (prefix and settings, never the secret)",
    Perm.KEYS_CREATE: "Create API keys, and change, rotate or revoke the ones they created",
    Perm.KEYS_MANAGE: "Rotate, revoke and change the limits of any API key",
    Perm.POLICY_VIEW: "See the routing policy",
    Perm.POLICY_MANAGE: "Change the routing policy and rate limits",
    Perm.BUDGETS_VIEW: "See budgets, spend and recommendations",
    Perm.BUDGETS_MANAGE: "Create, change and delete budgets and alert settings",
    Perm.USAGE_VIEW: "See and export usage",
    Perm.REQUEST_LOG_VIEW: "Read the kept request and response bodies (PII masked), when the log is on",
    Perm.CREDENTIALS_MANAGE: "See and set provider keys (BYOK)",
    Perm.AUDIT_VIEW: "Review and export the audit log",
}

_EVERYONE = frozenset(Role)
_MANAGERS = frozenset({Role.OWNER, Role.ADMIN})

MATRIX: dict[Perm, frozenset[Role]] = {
    Perm.ORG_VIEW: _EVERYONE,
    Perm.ORG_UPDATE: _MANAGERS,
    Perm.ORG_EXPORT: frozenset({Role.OWNER}),
    Perm.MEMBERS_VIEW: _EVERYONE,
    Perm.MEMBERS_MANAGE: _MANAGERS,
    Perm.TEAMS_MANAGE: _MANAGERS,
    Perm.KEYS_VIEW: frozenset({Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER}),
    Perm.KEYS_CREATE: frozenset({Role.OWNER, Role.ADMIN, Role.MEMBER}),
    Perm.KEYS_MANAGE: _MANAGERS,
    Perm.POLICY_VIEW: _EVERYONE,
    Perm.POLICY_MANAGE: _MANAGERS,
    Perm.BUDGETS_VIEW: _EVERYONE,
    Perm.BUDGETS_MANAGE: frozenset({Role.OWNER, Role.ADMIN, Role.BILLING}),
    Perm.USAGE_VIEW: _EVERYONE,
    Perm.REQUEST_LOG_VIEW: _MANAGERS,
    Perm.CREDENTIALS_MANAGE: _MANAGERS,
    Perm.AUDIT_VIEW: _MANAGERS,
}

# The role an API key acts with on the management API, by scope.
SCOPE_ROLES: dict[str, Role] = {"read": Role.VIEWER, "admin": Role.ADMIN}


def role_can(role: str, perm: Perm) -> bool:
    return role in MATRIX[perm]


def assignable_roles(role: str) -> frozenset[Role]:
    """Roles that someone with ``role`` may give or take away: only an owner touches owners."""
    if role == Role.OWNER:
        return _EVERYONE
    if role in _MANAGERS:
        return _EVERYONE - {Role.OWNER}
    return frozenset()


def permission_table() -> str:
    """The matrix as a Markdown table, as the README shows it."""
    roles = list(Role)
    header = "| Permission | " + " | ".join(r.label for r in roles) + " |"
    rule = "|---|" + "---|" * len(roles)
    rows = [
        f"| `{perm.value}`: {PERM_DESCRIPTIONS[perm]} | "
        + " | ".join("✓" if role in MATRIX[perm] else "" for role in roles)
        + " |"
        for perm in Perm
    ]
    return "\n".join([header, rule, *rows])
