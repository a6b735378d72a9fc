"""The console's role proof: every organization page, opened and submitted by every role, answers as the
permission matrix says (403 exactly where the role lacks the page's permission), and a refusal changes nothing.

Each page declares its permissions through ``console.access.org_page``; a page without the decorator fails here.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import resolve

from accounts.models import Role
from accounts.permissions import Perm, role_can
from audit.models import AuditEvent

from .endpoints import World, console_pages
from .test_cross_tenant import console_path


def declared(route: str, world: World) -> tuple[Perm, Perm]:
    view = resolve(console_path(route, world.slug, world.ids)).func
    perms = getattr(view, "console_perms", None)
    assert perms is not None, f"/{route} is not an org_page: it must declare its permissions"
    return perms


@pytest.mark.parametrize(("name", "route"), console_pages())
def test_each_role_gets_403_exactly_where_the_matrix_says(name: str, route: str, alpha: World) -> None:
    view_perm, post_perm = declared(route, alpha)
    path = console_path(route, alpha.slug, alpha.ids)
    for role in Role:
        client = Client()
        client.force_login(alpha.users[role.value])
        seen = client.get(path)
        if role_can(role, view_perm):
            assert seen.status_code != 403, f"{name}: {role} may see it ({view_perm}) but got 403"
        else:
            assert seen.status_code == 403, f"{name}: {role} lacks {view_perm} but got {seen.status_code}"
        if not role_can(role, post_perm):
            events = AuditEvent.objects.count()
            refused = client.post(path, {"name": "x", "email": "someone@example.com"})
            assert refused.status_code == 403, f"{name}: {role} lacks {post_perm} but POST got {refused.status_code}"
            assert AuditEvent.objects.count() == events, f"{name}: a refused POST by {role} changed something"
