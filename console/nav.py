"""The console's navigation: one list, so every page shows the same menu and hides what a role may not open."""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import NoReverseMatch, reverse

from accounts.permissions import Perm

from .access import OrgAccess


@dataclass(frozen=True)
class NavItem:
    label: str
    url_name: str
    perm: Perm


ORG_NAV = (
    NavItem("Dashboard", "console-dashboard", Perm.ORG_VIEW),
    NavItem("Playground", "console-playground", Perm.KEYS_CREATE),
    NavItem("API keys", "console-keys", Perm.KEYS_VIEW),
    NavItem("Budgets", "console-budgets", Perm.BUDGETS_VIEW),
    NavItem("Usage", "console-usage", Perm.USAGE_VIEW),
    NavItem("Members", "console-members", Perm.MEMBERS_VIEW),
    NavItem("Routing", "console-routing", Perm.POLICY_VIEW),
    NavItem("Savings", "console-recommendations", Perm.BUDGETS_VIEW),
    NavItem("Audit log", "console-audit", Perm.AUDIT_VIEW),
    NavItem("Settings", "console-settings", Perm.ORG_VIEW),
)


def org_nav(access: OrgAccess, current_path: str) -> list[dict[str, object]]:
    """The menu items this member may open, with their URLs; pages not built yet are left out."""
    items: list[dict[str, object]] = []
    for item in ORG_NAV:
        if not access.can(item.perm):
            continue
        try:
            url = reverse(item.url_name, args=[access.organization.slug])
        except NoReverseMatch:
            continue
        # The dashboard's URL starts every organization page's, so only it is matched exactly.
        exact = item.url_name == "console-dashboard"
        current = current_path == url if exact else current_path.startswith(url)
        items.append({"label": item.label, "url": url, "current": current})
    return items
