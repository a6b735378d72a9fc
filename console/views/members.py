"""Console pages: members and their roles, invitations, and teams.

Writes go through the management API's views, which enforce that only an
owner gives or takes the owner role, that the last owner stays, and that
anyone may leave; the page offers only what the viewer's role may do
(``accounts.permissions.assignable_roles``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import URLPattern, path

from accounts import selectors
from accounts.api import InvitationDetailView, InvitationListView, MemberDetailView, TeamDetailView, TeamListView
from accounts.models import Invitation, Membership, Team
from accounts.permissions import Perm, assignable_roles

from ..access import OrgAccess, org_page
from ..bridge import APIResult
from ..forms_manage import InviteForm, MemberRemoveForm, MemberUpdateForm, TeamForm
from ..submit import done, submit

TEMPLATE = "console/members/list.html"


@dataclass(frozen=True)
class MemberRow:
    membership: Membership
    form: MemberUpdateForm | None
    is_self: bool
    removable: bool


@dataclass(frozen=True)
class InvitationRow:
    invitation: Invitation
    revocable: bool


@dataclass(frozen=True)
class TeamRow:
    team: Team
    form: TeamForm | None


def render_page(
    request: HttpRequest,
    access: OrgAccess,
    *,
    invite_form: InviteForm | None = None,
    member_form: MemberUpdateForm | None = None,
    member_id: int | None = None,
    team_form: TeamForm | None = None,
    team_id: int | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    """The page; a bound form that failed replaces the blank one of its row (member, team) or section."""
    organization = access.organization
    manage = access.can(Perm.MEMBERS_MANAGE)
    roles = assignable_roles(access.role) if manage else frozenset()
    members = []
    for membership in selectors.members_for_org(organization=organization):
        form = None
        if manage:
            form = (
                member_form
                if member_id == membership.pk and member_form is not None
                else MemberUpdateForm(organization=organization, role=access.role, membership=membership)
            )
        is_self = membership.pk == access.membership.pk
        members.append(
            MemberRow(
                membership=membership, form=form, is_self=is_self, removable=not is_self and membership.role in roles
            )
        )
    invitations = [
        InvitationRow(invitation=invitation, revocable=invitation.status == "pending" and invitation.role in roles)
        for invitation in selectors.invitations_for_org(organization=organization)
    ]
    teams_manage = access.can(Perm.TEAMS_MANAGE)
    teams = []
    for team in selectors.teams_for_org(organization=organization):
        rename: TeamForm | None = None
        if teams_manage:
            rename = (
                team_form
                if team_id == team.pk and team_form is not None
                else TeamForm(prefix=f"t{team.pk}", initial={"name": team.name})
            )
        teams.append(TeamRow(team=team, form=rename))
    if invite_form is None and manage:
        invite_form = InviteForm(organization=organization, role=access.role)
    create_team_form = team_form if team_id is None and team_form is not None else None
    if create_team_form is None and teams_manage:
        create_team_form = TeamForm()
    context = access.context(
        members=members,
        invitations=invitations,
        teams=teams,
        invite_form=invite_form,
        team_create_form=create_team_form,
        remove_form=MemberRemoveForm(),
        error=error,
    )
    return render(request, TEMPLATE, context, status=status)


@org_page(Perm.MEMBERS_VIEW, post=Perm.MEMBERS_MANAGE)
def members_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    """Members, invitations and teams; POST invites someone (the API emails them the link)."""
    if request.method != "POST":
        return render_page(request, access)
    form = InviteForm(request.POST, organization=access.organization, role=access.role)
    slug = access.organization.slug
    return submit(
        request,
        InvitationListView,
        method="POST",
        form=form,
        page=partial(render_page, request, access, invite_form=form),
        success=lambda _: done(request, f"Invitation sent to {form.cleaned_data['email']}.", "console-members", slug),
        org=slug,
    )


def get_membership(access: OrgAccess, membership_id: int) -> Membership:
    membership = selectors.membership_get(organization=access.organization, membership_id=membership_id)
    if membership is None:
        raise Http404("No such member.")
    return membership


@org_page(Perm.MEMBERS_VIEW, post=Perm.MEMBERS_MANAGE)
def member_update_page(request: HttpRequest, access: OrgAccess, membership_id: int) -> HttpResponse:
    """Change one member's role or team."""
    membership = get_membership(access, membership_id)
    if request.method != "POST":
        return redirect("console-members", access.organization.slug)
    form = MemberUpdateForm(request.POST, organization=access.organization, role=access.role, membership=membership)
    slug = access.organization.slug
    if form.is_valid() and not form.api_body():
        return done(request, "Nothing to change.", "console-members", slug)
    return submit(
        request,
        MemberDetailView,
        method="PATCH",
        form=form,
        page=partial(render_page, request, access, member_form=form, member_id=membership.pk),
        success=lambda _: done(request, f"{membership.user.email} saved.", "console-members", slug),
        org=slug,
        membership_id=membership.pk,
    )


@org_page(Perm.MEMBERS_VIEW)
def member_remove_page(request: HttpRequest, access: OrgAccess, membership_id: int) -> HttpResponse:
    """Remove a member, or leave (one's own row); the API decides who may remove whom."""
    membership = get_membership(access, membership_id)
    if request.method != "POST":
        return redirect("console-members", access.organization.slug)
    form = MemberRemoveForm(request.POST)
    revoke_keys = form.is_valid() and form.cleaned_data["revoke_keys"]

    def removed(_: APIResult) -> HttpResponse:
        if membership.pk == access.membership.pk:
            return done(request, f"You left {access.organization.name}.", "console-home")
        return done(request, f"{membership.user.email} removed.", "console-members", access.organization.slug)

    return submit(
        request,
        MemberDetailView,
        method="DELETE",
        query={"revoke_keys": "true" if revoke_keys else "false"},
        page=partial(render_page, request, access),
        success=removed,
        org=access.organization.slug,
        membership_id=membership.pk,
    )


@org_page(Perm.MEMBERS_VIEW, post=Perm.MEMBERS_MANAGE)
def invitation_revoke_page(request: HttpRequest, access: OrgAccess, invitation_id: int) -> HttpResponse:
    if selectors.invitation_get(organization=access.organization, invitation_id=invitation_id) is None:
        raise Http404("No such invitation.")
    if request.method != "POST":
        return redirect("console-members", access.organization.slug)
    slug = access.organization.slug
    return submit(
        request,
        InvitationDetailView,
        method="DELETE",
        page=partial(render_page, request, access),
        success=lambda _: done(request, "Invitation revoked.", "console-members", slug),
        org=slug,
        invitation_id=invitation_id,
    )


@org_page(Perm.MEMBERS_VIEW, post=Perm.TEAMS_MANAGE)
def team_create_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    if request.method != "POST":
        return redirect("console-members", access.organization.slug)
    form = TeamForm(request.POST)
    slug = access.organization.slug
    return submit(
        request,
        TeamListView,
        method="POST",
        form=form,
        page=partial(render_page, request, access, team_form=form),
        success=lambda _: done(request, f"Team “{form.cleaned_data['name']}” created.", "console-members", slug),
        org=slug,
    )


def get_team(access: OrgAccess, team_id: int) -> Team:
    team = selectors.team_get(organization=access.organization, team_id=team_id)
    if team is None:
        raise Http404("No such team.")
    return team


@org_page(Perm.MEMBERS_VIEW, post=Perm.TEAMS_MANAGE)
def team_update_page(request: HttpRequest, access: OrgAccess, team_id: int) -> HttpResponse:
    team = get_team(access, team_id)
    if request.method != "POST":
        return redirect("console-members", access.organization.slug)
    form = TeamForm(request.POST, prefix=f"t{team.pk}")
    slug = access.organization.slug
    return submit(
        request,
        TeamDetailView,
        method="PATCH",
        form=form,
        page=partial(render_page, request, access, team_form=form, team_id=team.pk),
        success=lambda _: done(request, f"Team renamed to “{form.cleaned_data['name']}”.", "console-members", slug),
        org=slug,
        team_id=team.pk,
    )


@org_page(Perm.MEMBERS_VIEW, post=Perm.TEAMS_MANAGE)
def team_delete_page(request: HttpRequest, access: OrgAccess, team_id: int) -> HttpResponse:
    team = get_team(access, team_id)
    if request.method != "POST":
        return redirect("console-members", access.organization.slug)
    slug = access.organization.slug
    return submit(
        request,
        TeamDetailView,
        method="DELETE",
        page=partial(render_page, request, access),
        success=lambda _: done(request, f"Team “{team.name}” deleted.", "console-members", slug),
        org=slug,
        team_id=team.pk,
    )


urlpatterns: list[URLPattern] = [
    path("<slug:org>/members/", members_page, name="console-members"),
    path("<slug:org>/members/<int:membership_id>/", member_update_page, name="console-member-update"),
    path("<slug:org>/members/<int:membership_id>/remove/", member_remove_page, name="console-member-remove"),
    path(
        "<slug:org>/members/invitations/<int:invitation_id>/revoke/",
        invitation_revoke_page,
        name="console-invitation-revoke",
    ),
    path("<slug:org>/members/teams/", team_create_page, name="console-team-create"),
    path("<slug:org>/members/teams/<int:team_id>/", team_update_page, name="console-team-update"),
    path("<slug:org>/members/teams/<int:team_id>/delete/", team_delete_page, name="console-team-delete"),
]
