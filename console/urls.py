"""The console's URLs: each area's views module lists its own, all under ``/console/``."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

from .views import account, budgets, dashboard, keys, members, onboarding, playground, routing, settings, usage

urlpatterns: list[URLPattern | URLResolver] = [
    *account.urlpatterns,
    *onboarding.urlpatterns,
    *dashboard.urlpatterns,
    *usage.urlpatterns,
    *playground.urlpatterns,
    *keys.urlpatterns,
    *budgets.urlpatterns,
    *members.urlpatterns,
    *routing.urlpatterns,
    *settings.urlpatterns,
]
