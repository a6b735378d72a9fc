"""Forms of the console's management pages: keys, budgets, members, routing and settings.

A form here renders its fields and coerces the posted strings into the types
the management API takes; the API (called through :mod:`console.bridge`)
validates the rest and decides. Its refusal lands back on the field it names
(:meth:`APIForm.add_api_error`), so the page shows the API's own words.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, available_timezones

from django import forms
from django.conf import settings
from django.db.models import Q

from accounts.api import grantable_scopes
from accounts.models import APIKey, KeyScope, Membership, Organization, Role, RoutingPreference, RoutingStrategy, Team
from accounts.permissions import assignable_roles
from accounts.serializers import (
    MAX_GRACE_SECONDS,
    MAX_INT,
    MAX_REQUEST_LOG_RETENTION_DAYS,
    MAX_RESPONSE_CACHE_TTL_SECONDS,
)
from billing.models import Budget, BudgetPeriod, BudgetScope, default_alert_thresholds
from providers.models import Model, Provider
from routing.pii import PIIAction, PIIEntity, PIIPolicy

from .bridge import APIResult

Choices = list[tuple[str, str]]


class APIForm(forms.Form):
    """A form whose cleaned values become a management-API body, and which shows the API's refusal."""

    # The API's name for a field, where the form names it differently.
    param_fields: ClassVar[dict[str, str]] = {}

    def api_body(self) -> dict[str, Any]:
        return dict(self.cleaned_data)

    def add_api_error(self, result: APIResult) -> None:
        """Put the API's message on the field it names (``param``), or on the form as a whole."""
        message = result.message or f"The request was refused (HTTP {result.status})."
        param = result.param or ""
        name = self.param_fields.get(param.split(".")[0], param.split(".")[0])
        if name in self.fields:
            prefix = f"'{param}': "
            self.add_error(name, message.removeprefix(prefix))
        else:
            self.add_error(None, message)


def per_minute_limit(label: str) -> forms.IntegerField:
    return forms.IntegerField(label=label, min_value=1, max_value=MAX_INT, required=False, help_text="Blank: no limit.")


def optional_id_choice(label: str, choices: Choices, *, empty: str = "None") -> forms.TypedChoiceField:
    return forms.TypedChoiceField(
        label=label, choices=[("", empty), *choices], coerce=int, empty_value=None, required=False
    )


def team_choices(organization: Organization) -> Choices:
    return [(str(team.pk), team.name) for team in Team.objects.filter(organization=organization).order_by("name")]


def catalog_model_choices(*, within: Organization | None = None, keep: Iterable[str] = ()) -> Choices:
    """Enabled models of enabled providers; with ``within``, only those its routing policy allows.

    ``keep`` adds names already chosen, so editing never silently drops a model that left the catalog.
    """
    query = Model.objects.filter(enabled=True, provider__enabled=True)
    if within is not None and within.allowed_models:
        query = query.filter(name__in=within.allowed_models)
    if within is not None and within.allowed_providers:
        query = query.filter(provider__slug__in=within.allowed_providers)
    names = list(query.order_by("provider__slug", "name").values_list("name", flat=True))
    names += sorted(set(keep) - set(names))
    return [(name, name) for name in names]


def provider_choices(*, within: Organization | None = None, keep: Iterable[str] = ()) -> Choices:
    query = Provider.objects.filter(enabled=True)
    if within is not None and within.allowed_providers:
        query = query.filter(slug__in=within.allowed_providers)
    found = dict(query.order_by("slug").values_list("slug", "name"))
    for slug in sorted(set(keep) - set(found)):
        found[slug] = slug
    return list(found.items())


def start_of_day(day: date | None, organization: Organization) -> datetime | None:
    """A date as the first instant of that day in the organization's time zone."""
    if day is None:
        return None
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(organization.timezone))


def local_date(moment: datetime | None, organization: Organization) -> date | None:
    return None if moment is None else moment.astimezone(ZoneInfo(organization.timezone)).date()


# --- API keys -----------------------------------------------------------------------------------


class KeyFields(APIForm):
    name = forms.CharField(max_length=200)
    expires_at = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="At 00:00 in the organization's time zone. Blank: never.",
    )
    rpm_limit = per_minute_limit("Requests per minute")
    tpm_limit = per_minute_limit("Tokens per minute")
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 8}),
        help_text="None selected: every model the organization allows.",
    )
    allowed_providers = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None selected: every provider the organization allows.",
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.organization = organization

    def set_catalog(self, *, models: Collection[str] = (), providers: Collection[str] = ()) -> None:
        field = self.fields["allowed_models"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = catalog_model_choices(within=self.organization, keep=models)
        field = self.fields["allowed_providers"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = provider_choices(within=self.organization, keep=providers)

    def api_body(self) -> dict[str, Any]:
        body = dict(self.cleaned_data)
        if "expires_at" in body:
            body["expires_at"] = start_of_day(body["expires_at"], self.organization)
        return body


class KeyCreateForm(KeyFields):
    field_order = ["name", "scopes", "team", "expires_at", "rpm_limit", "tpm_limit", "allowed_models"]

    scopes = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        initial=[KeyScope.PROXY.value],
        help_text="proxy: call /v1/; read: read the management API; admin: manage the organization.",
    )
    team = optional_id_choice("Team", [])

    def __init__(self, *args: Any, organization: Organization, role: str, **kwargs: Any) -> None:
        super().__init__(*args, organization=organization, **kwargs)
        allowed = grantable_scopes(role)
        scopes = self.fields["scopes"]
        assert isinstance(scopes, forms.MultipleChoiceField)
        scopes.choices = [(value, label) for value, label in KeyScope.choices if value in allowed]
        team = self.fields["team"]
        assert isinstance(team, forms.TypedChoiceField)
        team.choices = [("", "None"), *team_choices(organization)]
        self.set_catalog()


class KeyEditForm(KeyFields):
    """Sends only what changed, so an untouched expiry in the past (a rotated key) is not refused."""

    def __init__(self, *args: Any, organization: Organization, api_key: APIKey, **kwargs: Any) -> None:
        initial = {
            "name": api_key.name,
            "expires_at": local_date(api_key.expires_at, organization),
            "rpm_limit": api_key.rpm_limit,
            "tpm_limit": api_key.tpm_limit,
            "allowed_models": list(api_key.allowed_models),
            "allowed_providers": list(api_key.allowed_providers),
        }
        kwargs["initial"] = initial
        super().__init__(*args, organization=organization, **kwargs)
        self.set_catalog(models=api_key.allowed_models, providers=api_key.allowed_providers)

    def api_body(self) -> dict[str, Any]:
        body = super().api_body()
        return {name: value for name, value in body.items() if name in self.changed_data}


class KeyRotateForm(APIForm):
    grace_seconds = forms.IntegerField(
        label="Grace period (seconds)",
        min_value=0,
        max_value=MAX_GRACE_SECONDS,
        help_text="How long the old key keeps working.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"grace_seconds": settings.MUXER_KEY_ROTATION_GRACE_SECONDS})
        super().__init__(*args, **kwargs)


# --- budgets ------------------------------------------------------------------------------------


class ThresholdsField(forms.CharField):
    """Percents of the limit as "50, 80, 95, 100"."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[int]:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return []
        try:
            numbers = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise forms.ValidationError("Give whole percents separated by commas, like 50, 80, 100.") from None
        if any(not 1 <= n <= 100 for n in numbers):
            raise forms.ValidationError("Each threshold is a percent from 1 to 100.")
        return sorted(set(numbers))


class BudgetFields(APIForm):
    name = forms.CharField(max_length=200, required=False)
    limit_usd = forms.DecimalField(
        label="Limit (USD)",
        max_digits=20,
        decimal_places=10,
        min_value=0,
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    hard_limit = forms.BooleanField(label="Hard limit (refuse requests over it)", required=False, initial=True)
    alert_thresholds = ThresholdsField(
        label="Alert at (% of the limit)", required=False, help_text="Comma-separated, e.g. 50, 80, 95, 100."
    )
    enabled = forms.BooleanField(required=False, initial=True)


class BudgetCreateForm(BudgetFields):
    field_order = ["name", "scope", "team", "api_key", "user", "model", "period", "limit_usd"]

    scope = forms.ChoiceField(choices=BudgetScope.choices, initial=BudgetScope.ORGANIZATION)
    team = optional_id_choice("Team (for a team budget)", [], empty="-")
    api_key = optional_id_choice("API key (for a key budget)", [], empty="-")
    user = optional_id_choice("Member (for a user budget)", [], empty="-")
    model = forms.ChoiceField(label="Model", required=False, help_text="Only this model's spend; blank: all.")
    period = forms.ChoiceField(choices=BudgetPeriod.choices, initial=BudgetPeriod.MONTHLY)

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"alert_thresholds": default_alert_thresholds()})
        super().__init__(*args, **kwargs)
        keys = APIKey.objects.filter(organization=organization, revoked_at__isnull=True).order_by("name", "id")
        members = Membership.objects.filter(organization=organization).select_related("user").order_by("user__email")
        choices: dict[str, Choices] = {
            "team": team_choices(organization),
            "api_key": [(str(key.pk), f"{key.name} ({key.prefix}…)") for key in keys],
            "user": [(str(m.user_id), m.user.email) for m in members],
        }
        for name, options in choices.items():
            field = self.fields[name]
            assert isinstance(field, forms.TypedChoiceField)
            field.choices = [("", "-"), *options]
        model = self.fields["model"]
        assert isinstance(model, forms.ChoiceField)
        model.choices = [("", "All models"), *catalog_model_choices()]

    def api_body(self) -> dict[str, Any]:
        """Only the scope's own target: the other target selects are shown (without JavaScript) but do not apply."""
        body = dict(self.cleaned_data)
        wanted = {BudgetScope.TEAM: "team", BudgetScope.API_KEY: "api_key", BudgetScope.USER: "user"}.get(body["scope"])
        for target in ("team", "api_key", "user"):
            if target != wanted:
                body.pop(target, None)
        return body


class BudgetEditForm(BudgetFields):
    def __init__(self, *args: Any, budget: Budget, **kwargs: Any) -> None:
        initial = {
            "name": budget.name,
            "limit_usd": format(budget.limit_usd.normalize(), "f"),
            "hard_limit": budget.hard_limit,
            "alert_thresholds": budget.alert_thresholds,
            "enabled": budget.enabled,
        }
        kwargs["initial"] = initial
        super().__init__(*args, **kwargs)


class AlertSettingsForm(APIForm):
    alert_email = forms.EmailField(
        label="Alert email", max_length=254, required=False, help_text="Blank: the organization's owners."
    )
    webhook_url = forms.URLField(
        label="Webhook URL",
        max_length=200,
        required=False,
        assume_scheme="https",
        help_text="Alerts are POSTed here, signed.",
    )


# --- members, invitations and teams ------------------------------------------------------------


def role_choices(roles: Collection[str]) -> Choices:
    return [(value, label) for value, label in Role.choices if value in roles]


class InviteForm(APIForm):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField(initial=Role.MEMBER)
    team = optional_id_choice("Team", [])

    def __init__(self, *args: Any, organization: Organization, role: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["role"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = role_choices(assignable_roles(role))
        team = self.fields["team"]
        assert isinstance(team, forms.TypedChoiceField)
        team.choices = [("", "None"), *team_choices(organization)]


class MemberUpdateForm(APIForm):
    """One member's row: the role (only the ones the viewer may give) and team."""

    role = forms.ChoiceField()
    team = optional_id_choice("Team", [])

    def __init__(
        self, *args: Any, organization: Organization, role: str, membership: Membership, **kwargs: Any
    ) -> None:
        kwargs.setdefault("initial", {"role": membership.role, "team": membership.team_id})
        kwargs.setdefault("prefix", f"m{membership.pk}")
        super().__init__(*args, **kwargs)
        roles = assignable_roles(role)
        field = self.fields["role"]
        assert isinstance(field, forms.ChoiceField)
        # The member's current role is listed even when the viewer may not give it, so the select shows it.
        field.choices = role_choices(roles | {membership.role})
        team = self.fields["team"]
        assert isinstance(team, forms.TypedChoiceField)
        team.choices = [("", "None"), *team_choices(organization)]
        self.editable = membership.role in roles
        # Shown disabled; a posted form still goes to the API, whose 403 says why.
        if not self.editable and not self.is_bound:
            for bound in self.fields.values():
                bound.disabled = True

    def api_body(self) -> dict[str, Any]:
        return {name: value for name, value in self.cleaned_data.items() if name in self.changed_data}


class MemberRemoveForm(forms.Form):
    revoke_keys = forms.BooleanField(label="Also revoke the keys they created", required=False)


class TeamForm(APIForm):
    name = forms.CharField(max_length=200)


# --- routing policy -----------------------------------------------------------------------------


class RoutingPolicyForm(APIForm):
    """The routing policy (``routing-policy/``) and the organization's limits (the organization PATCH)."""

    POLICY_FIELDS: ClassVar[tuple[str, ...]] = (
        "routing_strategy",
        "routing_preference",
        "allowed_models",
        "allowed_providers",
    )

    routing_strategy = forms.ChoiceField(label="Strategy", choices=RoutingStrategy.choices)
    routing_preference = forms.ChoiceField(label="Preference", choices=RoutingPreference.choices)
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 10}),
        help_text="None selected: every enabled model.",
    )
    allowed_providers = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, help_text="None selected: every provider."
    )
    rpm_limit = per_minute_limit("Requests per minute (organization)")
    tpm_limit = per_minute_limit("Tokens per minute (organization)")
    max_output_tokens_cap = forms.IntegerField(
        label="Output-token cap for budget holds",
        min_value=1,
        max_value=MAX_INT,
        required=False,
        help_text="Output tokens assumed for a request without max_tokens; blank: the model's maximum.",
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        initial = {name: getattr(organization, name) for name in self.base_fields}
        kwargs["initial"] = initial
        super().__init__(*args, **kwargs)
        models = self.fields["allowed_models"]
        assert isinstance(models, forms.MultipleChoiceField)
        models.choices = catalog_model_choices(keep=organization.allowed_models)
        providers = self.fields["allowed_providers"]
        assert isinstance(providers, forms.MultipleChoiceField)
        providers.choices = provider_choices(keep=organization.allowed_providers)

    def policy_body(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.POLICY_FIELDS}

    def limits_body(self) -> dict[str, Any]:
        return {name: value for name, value in self.cleaned_data.items() if name not in self.POLICY_FIELDS}


# --- settings -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def time_zone_names() -> tuple[str, ...]:
    """IANA zone names for the time-zone field's suggestions (the API validates the value)."""
    return tuple(
        sorted(
            name
            for name in available_timezones()
            if name not in {"localtime", "posixrules"} and not name.startswith(("posix/", "right/"))
        )
    )


class OrganizationSettingsForm(APIForm):
    name = forms.CharField(max_length=200)
    timezone = forms.CharField(
        label="Time zone",
        max_length=64,
        widget=forms.TextInput(attrs={"list": "time-zones", "autocomplete": "off"}),
        help_text="An IANA name like Europe/Paris; budget periods follow its calendar.",
    )


class CacheAndLogSettingsForm(APIForm):
    """The response cache's lifetime and the opt-in request log; the API checks the bounds again."""

    response_cache_ttl_seconds = forms.IntegerField(
        label="Response cache lifetime (seconds)",
        min_value=0,
        max_value=MAX_RESPONSE_CACHE_TTL_SECONDS,
        help_text="How long an identical request (temperature 0, or X-Muxer-Cache: use) is answered from the cache, "
        "at no cost. 0 turns the cache off; at most 30 days.",
    )
    request_log_enabled = forms.BooleanField(
        label="Keep request and response bodies",
        required=False,
        help_text="Stored beside each usage record with personal data and secrets masked, for owners and admins "
        "to read in the usage explorer.",
    )
    request_log_retention_days = forms.IntegerField(
        label="Keep bodies for (days)",
        min_value=1,
        max_value=MAX_REQUEST_LOG_RETENTION_DAYS,
        help_text="Older bodies are deleted, also after the log is turned off.",
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "response_cache_ttl_seconds": organization.response_cache_ttl_seconds,
                "request_log_enabled": organization.request_log_enabled,
                "request_log_retention_days": organization.request_log_retention_days,
            },
        )
        super().__init__(*args, **kwargs)


ACTION_CHOICES: Choices = [(action.value, action.value) for action in PIIAction]


class PIIPolicyForm(APIForm):
    """One action per entity type; "default" applies to the types left on "(default)"."""

    param_fields = {"pii_policy": "default"}

    default = forms.ChoiceField(label="Default", choices=ACTION_CHOICES)

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        try:
            policy = PIIPolicy.from_dict(organization.pii_policy or {})
        except ValueError:
            policy = PIIPolicy()
        initial: dict[str, str] = {"default": policy.default.value}
        initial |= {entity.value: action.value for entity, action in policy.actions.items()}
        kwargs["initial"] = initial
        super().__init__(*args, **kwargs)
        for entity in PIIEntity:
            self.fields[entity.value] = forms.ChoiceField(
                label=entity.value.replace("_", " "),
                choices=[("", "(default)"), *ACTION_CHOICES],
                required=False,
            )

    def api_body(self) -> dict[str, Any]:
        policy = {"default": self.cleaned_data["default"]}
        policy |= {
            entity.value: self.cleaned_data[entity.value] for entity in PIIEntity if self.cleaned_data.get(entity.value)
        }
        return {"pii_policy": policy}


class ProviderCredentialForm(APIForm):
    """An organization's own key for one provider; the field is never filled back in."""

    api_key = forms.CharField(
        label="API key",
        min_length=8,
        max_length=4096,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )

    def __init__(self, *args: Any, provider: Provider, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", provider.slug)
        super().__init__(*args, **kwargs)
        self.provider = provider


def byok_providers() -> list[Provider]:
    """Providers an organization may bring its own key for (the built-in fake needs none)."""
    return list(Provider.objects.filter(Q(enabled=True) & ~Q(slug="fake")).order_by("name"))
