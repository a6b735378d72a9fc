"""Who is looking at a console page: the organization from the URL, through the signed-in user's membership.

Every organization page goes through :func:`org_page`, which answers a
non-member with 404 (as if the organization did not exist) and a member whose
role lacks the page's permission with 403, exactly as the management API does.
Templates get ``can``: each permission of :mod:`accounts.permissions` by its
lower-case name (``can.keys_manage``), so a page hides what its reader may not do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Concatenate, ParamSpec

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse

from accounts import selectors
from accounts.models import Membership, Organization, User
from accounts.permissions import Perm, role_can

P = ParamSpec("P")


@dataclass(frozen=True)
class OrgAccess:
    user: User
    membership: Membership
    organization: Organization
    role: str
    path: str = ""

    def can(self, perm: Perm) -> bool:
        return role_can(self.role, perm)

    def require(self, perm: Perm) -> None:
        if not self.can(perm):
            raise PermissionDenied(f"Your role ({self.role}) cannot do this.")

    def context(self, **extra: Any) -> dict[str, Any]:
        """The template context every organization page starts from."""
        from .nav import org_nav

        return {
            "nav": org_nav(self, self.path),
            "organization": self.organization,
            "membership": self.membership,
            "role": self.role,
            "can": {perm.name.lower(): self.can(perm) for perm in Perm},
            **extra,
        }


def org_access(request: HttpRequest, org: str) -> OrgAccess:
    user = request.user
    membership = selectors.membership_for(user=user, organization_slug=org) if isinstance(user, User) else None
    if membership is None:
        raise Http404("No such organization.")
    assert isinstance(user, User)
    return OrgAccess(
        user=user,
        membership=membership,
        organization=membership.organization,
        role=membership.role,
        path=request.path,
    )


def org_page(
    perm: Perm = Perm.ORG_VIEW, *, post: Perm | None = None
) -> Callable[[Callable[Concatenate[HttpRequest, OrgAccess, P], HttpResponse]], Callable[..., HttpResponse]]:
    """Decorate a view ``(request, access, ...)`` served under ``/console/<org>/``.

    ``perm`` is needed to see the page; ``post`` (default: ``perm``) to submit it.
    """

    def decorate(
        view: Callable[Concatenate[HttpRequest, OrgAccess, P], HttpResponse],
    ) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, org: str, *args: P.args, **kwargs: P.kwargs) -> HttpResponse:
            access = org_access(request, org)
            access.require(perm)
            if request.method == "POST":
                access.require(post or perm)
            return view(request, access, *args, **kwargs)

        # What the page needs, for the role proof (tests/governance/test_console_roles.py).
        wrapper.console_perms = (perm, post or perm)  # type: ignore[attr-defined]
        return wrapper

    return decorate
