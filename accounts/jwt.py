"""Sign-in for the management API with JSON Web Tokens (simplejwt).

A short-lived access token and a refresh token. Refreshing rotates the refresh
token and blacklists the old one, so each refresh token works once; signing
out blacklists it. Errors come in the OpenAI error shape with plain messages
(simplejwt's own are nested dictionaries), and obtaining a token is
brute-force protected and recorded like any other sign-in.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt import exceptions as jwt_exceptions
from rest_framework_simplejwt import views as jwt_views
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken

from muxer_project.errors import APIError
from routing.openapi import error_responses

from . import bruteforce
from .api import signed_in_user
from .models import User


def _plain(error: jwt_exceptions.AuthenticationFailed | jwt_exceptions.TokenError, fallback: str) -> str:
    if isinstance(error, jwt_exceptions.TokenError):
        return str(error.args[0]) if error.args else fallback
    detail = error.detail
    if isinstance(detail, dict) and "detail" in detail:
        return str(detail["detail"])
    return fallback


class _PlainTokenErrors(jwt_views.TokenViewBase):
    invalid_message = "The token is invalid or has expired."

    def validated(self, request: Request) -> Any:
        serializer = self.get_serializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except jwt_exceptions.TokenError as error:
            raise exceptions.AuthenticationFailed(f"{self.invalid_message} ({_plain(error, 'invalid')})") from None
        except jwt_exceptions.AuthenticationFailed as error:
            raise exceptions.AuthenticationFailed(_plain(error, self.invalid_message)) from None
        return serializer

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self.validated(request).validated_data, status=status.HTTP_200_OK)


class BearerJWTScheme(SimpleJWTScheme):
    """Documents ``BearerJWTAuthentication`` as the JWT bearer scheme it is."""

    target_class = "accounts.jwt_auth.BearerJWTAuthentication"


TOKEN_PAIR = inline_serializer("TokenPair", {"access": serializers.CharField(), "refresh": serializers.CharField()})
TOKEN_ACCESS = inline_serializer(
    "TokenRefreshed", {"access": serializers.CharField(), "refresh": serializers.CharField()}
)


class TokenObtainView(_PlainTokenErrors, jwt_views.TokenObtainPairView):
    """Email and password for an access and a refresh token.

    Refused with 429 (``too_many_login_attempts``, ``Retry-After``) while the
    account or the caller's address is locked out after repeated failures.
    """

    @extend_schema(
        operation_id="auth_token_obtain",
        parameters=[
            OpenApiParameter(
                "Retry-After",
                OpenApiTypes.INT,
                OpenApiParameter.HEADER,
                response=[429],
                required=True,
                description="Seconds until the lockout ends.",
            )
        ],
        responses={
            200: TOKEN_PAIR,
            **error_responses(
                400,
                413,
                described={
                    401: "Wrong email or password.",
                    429: "Too many failed attempts; see Retry-After.",
                },
            ),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        username = data.get(User.USERNAME_FIELD)
        ip = bruteforce.client_ip(request._request)
        self._refuse_if_locked(username if isinstance(username, str) else None, ip)
        try:
            serializer = self.validated(request)
        except exceptions.AuthenticationFailed:
            # The failure that locks the account is answered as a lockout, too.
            self._refuse_if_locked(username if isinstance(username, str) else None, ip)
            raise
        # Recorded like a console sign-in: the audit log and last_login listen to this signal.
        user_logged_in.send(sender=User, request=request._request, user=serializer.user)
        return Response(serializer.validated_data, status=status.HTTP_200_OK)

    @staticmethod
    def _refuse_if_locked(username: str | None, ip: str | None) -> None:
        seconds = bruteforce.lockout_seconds(username=username, ip=ip)
        if seconds > 0:
            raise APIError(
                429,
                bruteforce.lockout_message(seconds),
                type="requests",
                code="too_many_login_attempts",
                headers={"Retry-After": str(seconds)},
            )


class TokenRefreshView(_PlainTokenErrors, jwt_views.TokenRefreshView):
    """A refresh token for a new access token and a new refresh token; the one sent stops working."""

    invalid_message = "The refresh token is invalid, expired or already used."

    @extend_schema(
        operation_id="auth_token_refresh",
        responses={200: TOKEN_ACCESS, **error_responses(400, 413, described={401: invalid_message})},
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class TokenVerifyView(_PlainTokenErrors, jwt_views.TokenVerifyView):
    """Whether a token is valid (200 with an empty object) or not (401)."""

    @extend_schema(
        operation_id="auth_token_verify",
        responses={
            200: inline_serializer("TokenValid", {}),
            **error_responses(400, 413, described={401: _PlainTokenErrors.invalid_message}),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class LogoutSerializer(serializers.Serializer[Any]):
    refresh = serializers.CharField(max_length=4096)


class LogoutView(APIView):
    """Sign out: the refresh token is blacklisted, so it can no longer be refreshed.

    Access tokens already issued stay valid until they expire (``MUXER_JWT_ACCESS_MINUTES``).
    """

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="auth_logout",
        request=LogoutSerializer,
        responses={
            204: None,
            **error_responses(
                400,
                413,
                described={
                    401: "Not signed in, or the refresh token is not valid.",
                    403: "The refresh token is someone else's, or an API key is not a person.",
                },
            ),
        },
    )
    def post(self, request: Request) -> Response:
        user = signed_in_user(request)
        serializer = LogoutSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            refresh = RefreshToken(serializer.validated_data["refresh"])  # type: ignore[arg-type]
        except jwt_exceptions.TokenError as error:
            raise exceptions.AuthenticationFailed(
                f"The refresh token is invalid, expired or already used ({_plain(error, 'invalid')})."
            ) from None
        if str(refresh.payload.get(jwt_settings.USER_ID_CLAIM)) != str(user.pk):
            raise exceptions.PermissionDenied("This refresh token belongs to someone else.")
        refresh.blacklist()
        user_logged_out.send(sender=User, request=request._request, user=user)
        return Response(status=status.HTTP_204_NO_CONTENT)
