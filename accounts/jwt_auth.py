"""The JWT authentication class of the management API (kept apart from the views: DRF imports it
while it is still defining ``APIView``)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework_simplejwt import exceptions as jwt_exceptions
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.tokens import Token


class BearerJWTAuthentication(JWTAuthentication):
    """simplejwt's authentication with a one-line error message instead of a nested dictionary."""

    def authenticate(self, request: Request) -> tuple[Any, Token] | None:  # type: ignore[override]
        try:
            return super().authenticate(request)
        except jwt_exceptions.InvalidToken:
            raise exceptions.AuthenticationFailed("The access token is invalid or has expired.") from None
        except jwt_exceptions.AuthenticationFailed as error:
            detail = error.detail
            message = str(detail["detail"]) if isinstance(detail, dict) and "detail" in detail else "Not signed in."
            raise exceptions.AuthenticationFailed(message) from None
