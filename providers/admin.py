"""The operators' catalog: providers with their health, models with their dated prices and capabilities.

Every change here is an audit event: a form save or a list edit writes the
admin's ``LogEntry`` (which ``audit.receivers`` records, with the row's state
before and after), and the bulk actions save row by row and log each changed
row the same way (a ``queryset.update()`` would write no ``LogEntry``). After a
change commits, this process forgets its catalog; every other gateway reloads it
within ``MUXER_CATALOG_CACHE_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .catalog import forget_catalog
from .health import ProviderHealth, TrafficStats, provider_health, provider_model_health
from .models import Model, ModelPrice, Provider, ProviderCredential, QualityTier
from .resilience import open_circuits

# How far in the past a new price may start: the time the form sat open, not a rewrite of history.
PRICE_BACKDATE_TOLERANCE = timedelta(hours=1)
PRICE_FIELDS = ("input_price_per_mtok_usd", "output_price_per_mtok_usd", "cached_input_price_per_mtok_usd")


def catalog_changed() -> None:
    """Forget this process's catalog once the change is committed (not before: a reload would miss it)."""
    transaction.on_commit(forget_catalog)


def set_field_logged(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any], field: str, value: object
) -> int:
    """Set ``field`` to ``value`` on each selected row that differs, saving and logging each one (an audit
    event per changed row, with before and after). Returns how many changed."""
    label = str(queryset.model._meta.get_field(field).verbose_name).capitalize()
    changed = 0
    with transaction.atomic():
        for obj in queryset.order_by("pk"):
            if getattr(obj, field) == value:
                continue
            setattr(obj, field, value)
            obj.save(update_fields=[field])
            modeladmin.log_change(request, obj, [{"changed": {"fields": [label]}}])
            changed += 1
        if changed:
            catalog_changed()
    return changed


def _report(modeladmin: admin.ModelAdmin[Any], request: HttpRequest, changed: int, total: int, what: str) -> None:
    noun = modeladmin.model._meta.verbose_name_plural if changed != 1 else modeladmin.model._meta.verbose_name
    unchanged = total - changed
    tail = f" ({unchanged} already were)" if unchanged else ""
    modeladmin.message_user(request, f"{what.capitalize()} {changed} {noun}{tail}.", messages.SUCCESS)


def _per_mtok(value: object) -> Decimal:
    # SQLite hands an annotated decimal back unscaled; show the column's own six places either way.
    return Decimal(str(value)).quantize(Decimal("0.000001"))


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1%}"


def _milliseconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def _last_error(traffic: TrafficStats) -> str:
    if traffic.last_error_at is None:
        return "—"
    return f"{traffic.last_error_code} at {timezone.localtime(traffic.last_error_at):%Y-%m-%d %H:%M:%S}"


# --- providers -------------------------------------------------------------------------------------


@admin.action(description="Enable the selected providers")
def enable_providers(modeladmin: ProviderAdmin, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
    _report(modeladmin, request, set_field_logged(modeladmin, request, queryset, "enabled", True), queryset.count(),
            "enabled")  # fmt: skip


@admin.action(description="Disable the selected providers")
def disable_providers(modeladmin: ProviderAdmin, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
    _report(modeladmin, request, set_field_logged(modeladmin, request, queryset, "enabled", False), queryset.count(),
            "disabled")  # fmt: skip


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin[Provider]):
    """Providers and how they are doing: circuits now, and traffic over the last hour (``providers.health``)."""

    list_display = [
        "slug", "name", "wire_format", "enabled", "enabled_models", "health", "circuits", "requests_last_hour",
        "error_rate", "p50_latency", "last_error",
    ]  # fmt: skip
    list_editable = ["enabled"]
    list_filter = ["enabled", "wire_format"]
    search_fields = ["slug", "name"]
    actions = [enable_providers, disable_providers]
    readonly_fields = ["health_report"]
    fieldsets = (
        (None, {"fields": ("slug", "name", "wire_format", "base_url", "api_key_env", "pricing_url", "enabled")}),
        ("Timeouts (blank: the gateway's defaults)",
         {"fields": ("connect_timeout_seconds", "first_byte_timeout_seconds", "total_timeout_seconds")}),
        ("Health (last hour)", {"fields": ("health_report",)}),
    )  # fmt: skip

    def get_fieldsets(self, request: HttpRequest, obj: Provider | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is not None else fieldsets[:-1]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        return (
            super()
            .get_queryset(request)
            .annotate(enabled_models=Count("models", filter=Q(models__enabled=True), distinct=True))
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl") if isinstance(response, TemplateResponse) else None
        if changelist is not None:
            # The page's rows, evaluated once (the template iterates the same instances): one traffic query
            # and one breaker scan for the whole page, then each row carries its health.
            rows = list(changelist.result_list)
            health = provider_health(providers=rows)
            for provider in rows:
                provider.health_now = health[provider.slug]  # type: ignore[attr-defined]
        return response

    @staticmethod
    def _health(provider: Provider) -> ProviderHealth:
        found: ProviderHealth | None = getattr(provider, "health_now", None)
        return found or provider_health(providers=[provider])[provider.slug]

    @admin.display(description="enabled models", ordering="enabled_models")
    def enabled_models(self, provider: Provider) -> int:
        return int(getattr(provider, "enabled_models", 0))

    @admin.display(description="health")
    def health(self, provider: Provider) -> SafeString:
        status = self._health(provider).status
        return format_html('<span class="provider-health" data-status="{}">{}</span>', status, status)

    @admin.display(description="circuits")
    def circuits(self, provider: Provider) -> str:
        return self._health(provider).circuit_summary

    @admin.display(description="requests (1h)")
    def requests_last_hour(self, provider: Provider) -> int:
        return self._health(provider).traffic.requests

    @admin.display(description="error rate (1h)")
    def error_rate(self, provider: Provider) -> str:
        return _percent(self._health(provider).traffic.error_rate)

    @admin.display(description="p50 latency (1h)")
    def p50_latency(self, provider: Provider) -> str:
        return _milliseconds(self._health(provider).traffic.p50_latency_ms)

    @admin.display(description="last error (1h)")
    def last_error(self, provider: Provider) -> str:
        return _last_error(self._health(provider).traffic)

    @admin.display(description="health")
    def health_report(self, provider: Provider) -> SafeString:
        if provider.pk is None:
            return format_html("{}", "—")
        summary = self._health(provider)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (m.name, "yes" if m.enabled else "no", m.circuit.replace("_", "-"), m.traffic.requests,
                 _percent(m.traffic.error_rate), _milliseconds(m.traffic.p50_latency_ms), _last_error(m.traffic))
                for m in provider_model_health(provider=provider)
            ),
        )  # fmt: skip
        return format_html(
            '<p id="provider-health-summary">Status: <strong>{}</strong>; {} requests, error rate {}, p50 {}.</p>'
            '<table id="provider-health-models"><thead><tr><th>model</th><th>enabled</th><th>circuit</th>'
            "<th>requests</th><th>error rate</th><th>p50 latency</th><th>last error</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            summary.status,
            summary.traffic.requests,
            _percent(summary.traffic.error_rate),
            _milliseconds(summary.traffic.p50_latency_ms),
            rows,
        )

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        catalog_changed()

    def delete_model(self, request: HttpRequest, obj: Provider) -> None:
        super().delete_model(request, obj)
        catalog_changed()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        super().delete_queryset(request, queryset)
        catalog_changed()


# --- models and their prices ------------------------------------------------------------------------


class ModelPriceForm(forms.ModelForm[ModelPrice]):
    """A new dated price. Prices are appended after the latest one, never before: the history stays what was
    charged (usage rows keep their own cost either way)."""

    class Meta:
        model = ModelPrice
        fields = ["effective_from", *PRICE_FIELDS, "source"]

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean() or {}
        for name in PRICE_FIELDS:
            value = cleaned.get(name)
            if isinstance(value, Decimal) and value < 0:
                self.add_error(name, "A price cannot be negative.")
        starts = cleaned.get("effective_from")
        if starts is None or not self.instance._state.adding:
            return cleaned
        if starts < timezone.now() - PRICE_BACKDATE_TOLERANCE:
            self.add_error("effective_from", "A new price cannot start in the past; date it now or later.")
            return cleaned
        model_id = self.instance.model_id
        latest = (
            ModelPrice.objects.filter(model_id=model_id)
            .order_by("-effective_from")
            .values_list("effective_from", flat=True)
            .first()
            if model_id
            else None
        )
        if latest is not None and starts <= latest:
            self.add_error(
                "effective_from",
                f"Prices are added after the latest one ({timezone.localtime(latest):%Y-%m-%d %H:%M}); "
                "date this one later.",
            )
        return cleaned


class ModelPriceInline(admin.TabularInline[ModelPrice, Model]):
    """The price history, newest first: the newest already in effect is charged (the model's own fields when
    none is). Existing prices are read-only and cannot be deleted; a new price is a new dated row."""

    model = ModelPrice
    form = ModelPriceForm
    extra = 1
    fields = ["effective_from", *PRICE_FIELDS, "source", "created_at"]
    readonly_fields = ["created_at"]
    ordering = ["-effective_from"]
    verbose_name = "price from a date"
    verbose_name_plural = "price history (new prices are added; existing ones are kept as charged)"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ContextWindowFilter(admin.SimpleListFilter):
    title = "context window"
    parameter_name = "context"
    BANDS: dict[str, tuple[int, int | None]] = {
        "lt32k": (0, 32_000),
        "32k-128k": (32_000, 128_000),
        "128k-1m": (128_000, 1_000_000),
        "ge1m": (1_000_000, None),
    }
    LABELS = {"lt32k": "under 32k", "32k-128k": "32k to 128k", "128k-1m": "128k to 1M", "ge1m": "1M or more"}

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return list(self.LABELS.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        band = self.BANDS.get(self.value() or "")
        if band is None:
            return queryset
        low, high = band
        queryset = queryset.filter(context_window__gte=low)
        return queryset if high is None else queryset.filter(context_window__lt=high)


@admin.action(description="Enable the selected models")
def enable_models(modeladmin: ModelAdmin, request: HttpRequest, queryset: QuerySet[Model]) -> None:
    _report(modeladmin, request, set_field_logged(modeladmin, request, queryset, "enabled", True), queryset.count(),
            "enabled")  # fmt: skip


@admin.action(description="Disable the selected models")
def disable_models(modeladmin: ModelAdmin, request: HttpRequest, queryset: QuerySet[Model]) -> None:
    _report(modeladmin, request, set_field_logged(modeladmin, request, queryset, "enabled", False), queryset.count(),
            "disabled")  # fmt: skip


def _set_tier_action(tier: QualityTier) -> Callable[[ModelAdmin, HttpRequest, QuerySet[Model]], None]:
    def set_tier(modeladmin: ModelAdmin, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        changed = set_field_logged(modeladmin, request, queryset, "quality_tier", tier.value)
        _report(modeladmin, request, changed, queryset.count(), f"set to {tier.label.lower()}:")

    set_tier.__name__ = f"set_tier_{tier.name.lower()}"
    return admin.action(description=f"Set the quality tier of the selected models to {tier.label.lower()}")(set_tier)


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin[Model]):
    """The catalog: the price in effect, capabilities, each model's circuit breaker (shared by every gateway
    instance), and bulk enable, disable and quality tier."""

    inlines = [ModelPriceInline]
    list_display = [
        "name", "provider", "kind", "quality_tier", "price_in", "price_out", "price_from", "next_price_from",
        "context_window", "max_output_tokens", "supports_tools", "supports_vision", "supports_json_mode",
        "supports_streaming", "enabled", "circuit",
    ]  # fmt: skip
    list_editable = ["quality_tier", "enabled"]
    list_select_related = ["provider"]
    list_filter = [
        "enabled", "provider", "kind", "quality_tier", ContextWindowFilter, "supports_tools", "supports_vision",
        "supports_json_mode", "supports_streaming",
    ]  # fmt: skip
    search_fields = ["name", "provider__slug"]
    actions = [
        enable_models, disable_models,
        *(_set_tier_action(tier) for tier in QualityTier),
    ]  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[Model]:
        now = timezone.now()
        in_effect = ModelPrice.objects.filter(model=OuterRef("pk"), effective_from__lte=now).order_by("-effective_from")
        upcoming = ModelPrice.objects.filter(model=OuterRef("pk"), effective_from__gt=now).order_by("effective_from")
        return (
            super()
            .get_queryset(request)
            .annotate(
                price_in_effect_in=Coalesce(
                    Subquery(in_effect.values("input_price_per_mtok_usd")[:1]), "input_price_per_mtok_usd"
                ),
                price_in_effect_out=Coalesce(
                    Subquery(in_effect.values("output_price_per_mtok_usd")[:1]), "output_price_per_mtok_usd"
                ),
                price_in_effect_from=Subquery(in_effect.values("effective_from")[:1]),
                price_next_from=Subquery(upcoming.values("effective_from")[:1]),
            )
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl") if isinstance(response, TemplateResponse) else None
        if changelist is not None:
            circuits = open_circuits()  # one scan for the page, not one per row
            for model in changelist.result_list:
                model.circuit_now = circuits.get(f"{model.provider.slug}/{model.name}", "closed")
        return response

    @admin.display(description="circuit")
    def circuit(self, obj: Model) -> str:
        found: str | None = getattr(obj, "circuit_now", None)
        return found or open_circuits().get(f"{obj.provider.slug}/{obj.name}", "closed")

    @admin.display(description="input $/Mtok", ordering="price_in_effect_in")
    def price_in(self, obj: Model) -> Decimal:
        return _per_mtok(getattr(obj, "price_in_effect_in", obj.input_price_per_mtok_usd))

    @admin.display(description="output $/Mtok", ordering="price_in_effect_out")
    def price_out(self, obj: Model) -> Decimal:
        return _per_mtok(getattr(obj, "price_in_effect_out", obj.output_price_per_mtok_usd))

    @admin.display(description="price since", ordering="price_in_effect_from")
    def price_from(self, obj: Model) -> str:
        since = getattr(obj, "price_in_effect_from", None)
        if since is None:
            return f"list price ({obj.price_as_of})" if obj.price_as_of else "list price"
        return f"{timezone.localtime(since):%Y-%m-%d %H:%M}"

    @admin.display(description="next price", ordering="price_next_from")
    def next_price_from(self, obj: Model) -> str:
        upcoming = getattr(obj, "price_next_from", None)
        return "—" if upcoming is None else f"{timezone.localtime(upcoming):%Y-%m-%d %H:%M}"

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        catalog_changed()

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        catalog_changed()

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        super().delete_model(request, obj)
        catalog_changed()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        super().delete_queryset(request, queryset)
        catalog_changed()


@admin.register(ProviderCredential)
class ProviderCredentialAdmin(admin.ModelAdmin[ProviderCredential]):
    """Read-only and masked: organizations set their own keys through the API, which audits it."""

    list_display = ["organization", "provider", "masked", "updated_at"]
    fields = readonly_fields = ("organization", "provider", "masked", "created_by", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
