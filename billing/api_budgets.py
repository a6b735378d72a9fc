"""The billing management API: budgets, console notifications and savings recommendations (DRF).

Every member reads and marks notifications read. Owners, admins and the
billing role change budgets (``accounts.permissions``). A non-member gets 404.
"""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import OrganizationScopedView, acting_user
from accounts.permissions import Perm
from routing.openapi import ORG_ERRORS, error_responses, list_of

from . import services
from .models import Budget, Notification
from .recommendations import recommendations_for
from .serializers import (
    BudgetCreateSerializer,
    BudgetSerializer,
    BudgetUpdateSerializer,
    NotificationQuerySerializer,
    NotificationSerializer,
    RecommendationQuerySerializer,
    RecommendationSerializer,
)


class BudgetListView(OrganizationScopedView):
    perms = {"GET": Perm.BUDGETS_VIEW, "POST": Perm.BUDGETS_MANAGE}

    @extend_schema(
        operation_id="budgets_list",
        responses={200: list_of(BudgetSerializer, name="BudgetList"), **error_responses(*ORG_ERRORS)},
    )
    def get(self, request: Request, org: str) -> Response:
        budgets = services.budgets_for_org(organization=self.organization)
        return Response({"object": "list", "data": BudgetSerializer(budgets, many=True).data})

    @extend_schema(
        operation_id="budgets_create",
        request=BudgetCreateSerializer,
        responses={201: BudgetSerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def post(self, request: Request, org: str) -> Response:
        serializer = BudgetCreateSerializer(data=request.data, context={"organization": self.organization})
        serializer.is_valid(raise_exception=True)
        try:
            budget = services.budget_create(
                organization=self.organization, actor=acting_user(request), **serializer.validated_data
            )
        except services.BudgetDuplicateError as exc:
            raise serializers.ValidationError({"non_field_errors": [str(exc)]}) from None
        return Response(BudgetSerializer(budget).data, status=status.HTTP_201_CREATED)


class BudgetDetailView(OrganizationScopedView):
    perms = {"GET": Perm.BUDGETS_VIEW, "PATCH": Perm.BUDGETS_MANAGE, "DELETE": Perm.BUDGETS_MANAGE}

    def get_budget(self, budget_id: int) -> Budget:
        budget = services.budget_get(organization=self.organization, budget_id=budget_id)
        if budget is None:
            raise NotFound("No such budget.")
        return budget

    @extend_schema(operation_id="budgets_retrieve", responses={200: BudgetSerializer, **error_responses(*ORG_ERRORS)})
    def get(self, request: Request, org: str, budget_id: int) -> Response:
        return Response(BudgetSerializer(self.get_budget(budget_id)).data)

    @extend_schema(
        operation_id="budgets_update",
        request=BudgetUpdateSerializer,
        responses={200: BudgetSerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def patch(self, request: Request, org: str, budget_id: int) -> Response:
        budget = self.get_budget(budget_id)
        serializer = BudgetUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = services.budget_update(budget=budget, actor=acting_user(request), **serializer.validated_data)
        return Response(BudgetSerializer(updated).data)

    @extend_schema(operation_id="budgets_destroy", responses={204: None, **error_responses(*ORG_ERRORS)})
    def delete(self, request: Request, org: str, budget_id: int) -> Response:
        services.budget_delete(budget=self.get_budget(budget_id), actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class NotificationListView(OrganizationScopedView):
    perms = {"GET": Perm.ORG_VIEW}
    limit = 100

    @extend_schema(
        operation_id="notifications_list",
        parameters=[NotificationQuerySerializer],
        responses={
            200: list_of(
                NotificationSerializer,
                name="NotificationList",
                extra={
                    "unread_count": serializers.IntegerField(help_text="Unread notifications, all of them."),
                },
            ),
            **error_responses(400, *ORG_ERRORS),
        },
    )
    def get(self, request: Request, org: str) -> Response:
        query = NotificationQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        notifications = services.notifications_for_org(
            organization=self.organization, unread_only=query.validated_data["unread"]
        )
        unread = services.notifications_for_org(organization=self.organization, unread_only=True).count()
        return Response(
            {
                "object": "list",
                "data": NotificationSerializer(notifications[: self.limit], many=True).data,
                "unread_count": unread,
            }
        )


class NotificationReadView(OrganizationScopedView):
    perms = {"POST": Perm.ORG_VIEW}

    @extend_schema(
        operation_id="notifications_read",
        request=None,
        responses={200: NotificationSerializer, **error_responses(*ORG_ERRORS)},
    )
    def post(self, request: Request, org: str, notification_id: int) -> Response:
        notification: Notification | None = services.notification_get(
            organization=self.organization, notification_id=notification_id
        )
        if notification is None:
            raise NotFound("No such notification.")
        return Response(NotificationSerializer(services.notification_mark_read(notification=notification)).data)


class RecommendationListView(OrganizationScopedView):
    perms = {"GET": Perm.BUDGETS_VIEW}

    @extend_schema(
        operation_id="recommendations_list",
        parameters=[RecommendationQuerySerializer],
        responses={
            200: list_of(
                RecommendationSerializer,
                name="RecommendationList",
                extra={
                    "days": serializers.IntegerField(help_text="The days of usage read."),
                    "total_monthly_saving_usd": serializers.CharField(
                        help_text="The recommendations' savings per 30 days, summed, in US dollars."
                    ),
                },
            ),
            **error_responses(400, *ORG_ERRORS),
        },
    )
    def get(self, request: Request, org: str) -> Response:
        query = RecommendationQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        days = query.validated_data["days"]
        found = recommendations_for(organization=self.organization, days=days)
        data = [
            {
                "kind": r.kind,
                "title": r.title,
                "detail": r.detail,
                "model": r.model,
                "suggested_model": r.suggested_model,
                "evidence": r.evidence,
                "monthly_saving_usd": f"{r.monthly_saving_usd:.2f}",
            }
            for r in found
        ]
        total = sum((r.monthly_saving_usd for r in found), start=Decimal(0))
        return Response(
            {
                "object": "list",
                "days": days,
                "data": RecommendationSerializer(data, many=True).data,
                "total_monthly_saving_usd": f"{total:.2f}",
            }
        )
