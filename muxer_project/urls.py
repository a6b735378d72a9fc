from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views import defaults
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from accounts import api as accounts_api
from accounts import api_gdpr, console
from accounts import jwt as accounts_jwt
from audit import api as audit_api
from audit import views as audit_views
from billing import api as usage_api
from billing import api_budgets as billing_api
from billing import api_request_log as request_log_api
from billing import views as billing_views
from providers import api as providers_api
from routing import errors
from routing import feedback as routing_feedback
from routing import views as routing_views

from . import health, metrics

# The operators' sign-in is brute-force protected like the console's, and says so when locked.
admin.site.login_form = console.LockoutAdminAuthenticationForm
admin.site.site_header = "ModelMuxer operator admin"
admin.site.site_title = "ModelMuxer operators"
admin.site.index_title = "Tenants, catalog, providers, usage and audit review"

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    path("favicon.ico", console.favicon),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="prometheus-metrics"),
    path("v1/models", routing_views.ModelListView.as_view(), name="v1-models"),
    path("v1/route", routing_views.RouteView.as_view(), name="v1-route"),
    path("v1/models/<path:model>", routing_views.ModelDetailView.as_view(), name="v1-model-detail"),
    path("v1/feedback", routing_feedback.FeedbackView.as_view(), name="v1-feedback"),
    path("api/auth/token/", accounts_jwt.TokenObtainView.as_view(), name="token-obtain"),
    path("api/auth/token/refresh/", accounts_jwt.TokenRefreshView.as_view(), name="token-refresh"),
    path("api/auth/token/verify/", accounts_jwt.TokenVerifyView.as_view(), name="token-verify"),
    path("api/auth/logout/", accounts_jwt.LogoutView.as_view(), name="token-logout"),
    path("api/me/export/", api_gdpr.MyExportView.as_view(), name="me-export"),
    path("api/me/erase/", api_gdpr.MyEraseView.as_view(), name="me-erase"),
    path("api/orgs/<slug:org>/export/", api_gdpr.OrganizationExportView.as_view(), name="org-export"),
    path("api/orgs/", accounts_api.OrganizationListView.as_view(), name="org-list"),
    path("api/orgs/<slug:org>/", accounts_api.OrganizationDetailView.as_view(), name="org-detail"),
    path("api/orgs/<slug:org>/routing-policy/", accounts_api.RoutingPolicyView.as_view(), name="routing-policy"),
    path("api/orgs/<slug:org>/keys/", accounts_api.APIKeyListView.as_view(), name="key-list"),
    path("api/orgs/<slug:org>/keys/<int:key_id>/", accounts_api.APIKeyDetailView.as_view(), name="key-detail"),
    path("api/orgs/<slug:org>/keys/<int:key_id>/revoke/", accounts_api.APIKeyRevokeView.as_view(), name="key-revoke"),
    path("api/orgs/<slug:org>/keys/<int:key_id>/rotate/", accounts_api.APIKeyRotateView.as_view(), name="key-rotate"),
    path("api/orgs/<slug:org>/webhook-secret/", accounts_api.WebhookSecretView.as_view(), name="org-webhook-secret"),
    path("api/orgs/<slug:org>/teams/", accounts_api.TeamListView.as_view(), name="team-list"),
    path("api/orgs/<slug:org>/teams/<int:team_id>/", accounts_api.TeamDetailView.as_view(), name="team-detail"),
    path("api/orgs/<slug:org>/members/", accounts_api.MemberListView.as_view(), name="member-list"),
    path(
        "api/orgs/<slug:org>/members/<int:membership_id>/",
        accounts_api.MemberDetailView.as_view(),
        name="member-detail",
    ),
    path("api/orgs/<slug:org>/invitations/", accounts_api.InvitationListView.as_view(), name="invitation-list"),
    path(
        "api/orgs/<slug:org>/invitations/<int:invitation_id>/",
        accounts_api.InvitationDetailView.as_view(),
        name="invitation-detail",
    ),
    path("api/invitations/accept/", accounts_api.InvitationAcceptView.as_view(), name="invitation-accept"),
    path(
        "api/orgs/<slug:org>/credentials/", providers_api.ProviderCredentialListView.as_view(), name="credential-list"
    ),
    path(
        "api/orgs/<slug:org>/credentials/<slug:provider>/",
        providers_api.ProviderCredentialDetailView.as_view(),
        name="credential-detail",
    ),
    path("api/orgs/<slug:org>/usage/", usage_api.UsageView.as_view(), name="usage"),
    path("api/orgs/<slug:org>/usage/export.csv", usage_api.UsageExportView.as_view(), name="usage-export"),
    path(
        "api/orgs/<slug:org>/usage/<int:usage_id>/bodies/",
        request_log_api.UsageBodiesView.as_view(),
        name="usage-bodies",
    ),
    path("api/orgs/<slug:org>/budgets/", billing_api.BudgetListView.as_view(), name="budget-list"),
    path("api/orgs/<slug:org>/budgets/<int:budget_id>/", billing_api.BudgetDetailView.as_view(), name="budget-detail"),
    path("api/orgs/<slug:org>/notifications/", billing_api.NotificationListView.as_view(), name="notification-list"),
    path(
        "api/orgs/<slug:org>/notifications/<int:notification_id>/read/",
        billing_api.NotificationReadView.as_view(),
        name="notification-read",
    ),
    path(
        "api/orgs/<slug:org>/recommendations/",
        billing_api.RecommendationListView.as_view(),
        name="recommendation-list",
    ),
    path("api/orgs/<slug:org>/audit-events/", audit_api.AuditEventListView.as_view(), name="audit-event-list"),
    path(
        "api/orgs/<slug:org>/audit-events/export", audit_api.AuditEventExportView.as_view(), name="audit-events-export"
    ),
    path("console/<slug:org>/recommendations/", billing_views.recommendations_page, name="console-recommendations"),
    path("console/<slug:org>/audit/", audit_views.audit_events_page, name="console-audit"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(template_name="docs/redoc.html"), name="api-redoc"),
    path("console/", console.console_home, name="console-home"),
    path("invitations/accept/", console.invitation_accept_page, name="invitation-accept-page"),
    path("console/login/", console.ConsoleLoginView.as_view(), name="console-login"),
    path("console/logout/", console.ConsoleLogoutView.as_view(), name="console-logout"),
    # Last among /console/: its organization pages start with the slug, so fixed paths above win.
    path("console/", include("console.urls")),
    path("admin/", admin.site.urls),
]


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(("/v1/", "/api/")):
        return errors.json_400(request, exception)
    return defaults.bad_request(request, exception)


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(("/v1/", "/api/")):
        return errors.json_404(request, exception)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(("/v1/", "/api/")):
        return errors.json_500(request)
    return defaults.server_error(request)
