from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("Users need an email address.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in with an email address; belongs to organizations through memberships."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    # Set when the person opens the emailed verification link; until then they may not invite anyone.
    email_verified_at = models.DateTimeField(null=True, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []  # type: ignore[misc]

    def __str__(self) -> str:
        return self.email


class RoutingStrategy(models.TextChoices):
    """How ``auto`` picks a model."""

    HEURISTIC = "heuristic", "Heuristic (rules on the request's features)"
    SEMANTIC = "semantic", "Semantic (a trained classifier)"
    CASCADE = "cascade", "Cascade (cheapest first, escalate weak answers)"
    HYBRID = "hybrid", "Hybrid (heuristic and semantic, cascade when unsure)"


class RoutingPreference(models.TextChoices):
    """What ``auto`` favours among models that can serve a request."""

    COST = "cost", "Cost"
    QUALITY = "quality", "Quality"
    SPEED = "speed", "Speed"


class Organization(models.Model):
    """The tenant. Every tenant-owned row points here."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model names this organization may use; empty means every enabled model."
    )
    allowed_providers = models.JSONField(
        default=list, blank=True, help_text="Provider slugs this organization may use; empty means every provider."
    )
    routing_strategy = models.CharField(max_length=16, choices=RoutingStrategy.choices, default=RoutingStrategy.HYBRID)
    routing_preference = models.CharField(
        max_length=16, choices=RoutingPreference.choices, default=RoutingPreference.COST
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute; blank: no limit.")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute; blank: no limit.")
    timezone = models.CharField(
        max_length=64, default="UTC", help_text="IANA time zone; budget periods follow its calendar."
    )
    max_output_tokens_cap = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Output tokens assumed for a request without max_tokens when reserving budget; "
        "blank takes the model's maximum.",
    )
    alert_email = models.EmailField(blank=True, help_text="Where budget alerts are emailed; blank: the owners.")
    webhook_url = models.URLField(blank=True, help_text="Budget alerts are POSTed here, signed.")
    webhook_secret = models.CharField(
        max_length=128, blank=True, help_text="HMAC-SHA256 key for the X-Muxer-Signature header."
    )
    pii_policy = models.JSONField(
        default=dict,
        blank=True,
        help_text='PII handling per entity type, e.g. {"email": "mask", "credit_card": "block", "default": "log"}; '
        "actions are off, log, mask and block. Empty: off.",
    )
    response_cache_ttl_seconds = models.PositiveIntegerField(
        default=3600,
        help_text="How long an exact-match cached answer is served (temperature 0, or X-Muxer-Cache: use); "
        "0 turns the response cache off.",
    )
    request_log_enabled = models.BooleanField(
        default=False, help_text="Keep each request's and response's bodies, PII masked, beside its usage record."
    )
    request_log_retention_days = models.PositiveSmallIntegerField(
        default=30, help_text="Kept request and response bodies are deleted after this many days."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Team(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=200)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute; blank: no limit.")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute; blank: no limit.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="team_unique_name_per_org")]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"
    BILLING = "billing", "Billing"


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="membership_unique_user_org")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class KeyScope(models.TextChoices):
    """What a key may be used for: the proxy (``/v1/``), reading the management API, or managing it."""

    PROXY = "proxy", "Proxy"
    READ = "read", "Read"
    ADMIN = "admin", "Admin"


def default_scopes() -> list[str]:
    return [KeyScope.PROXY.value]


class APIKey(models.Model):
    """A ModelMuxer API key. Only the lookup prefix and an HMAC-SHA256 digest are stored."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, unique=True, help_text="Non-secret start of the key, for lookup.")
    digest = models.CharField(max_length=64, help_text="HMAC-SHA256 of the whole key, hex.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model names this key may use; empty means what the organization allows."
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute; blank: no limit.")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute; blank: no limit.")
    allowed_providers = models.JSONField(
        default=list, blank=True, help_text="Provider slugs this key may use; empty means what the organization allows."
    )
    routing_strategy = models.CharField(
        max_length=16, choices=RoutingStrategy.choices, blank=True, help_text="Blank means the organization's."
    )
    routing_preference = models.CharField(
        max_length=16, choices=RoutingPreference.choices, blank=True, help_text="Blank means the organization's."
    )
    scopes = models.JSONField(default=default_scopes, help_text="Any of proxy, read and admin.")
    rotated_from = models.OneToOneField(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="rotated_to",
        help_text="The key this one replaced; it kept working until its grace period ended.",
    )

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class Invitation(models.Model):
    """An invitation to join an organization. Only an HMAC digest of its token is stored."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    digest = models.CharField(max_length=64, unique=True, help_text="HMAC-SHA256 of the invitation token, hex.")
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self) -> str:
        return f"Invitation to {self.organization} ({self.role})"

    @property
    def status(self) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"
