from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Model, ModelPrice, Provider, ProviderCredential
from .resilience import open_circuits


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin[Provider]):
    list_display = ["slug", "name", "wire_format", "base_url", "api_key_env", "enabled"]
    list_editable = ["enabled"]


class ModelPriceInline(admin.TabularInline[ModelPrice, Model]):
    """Dated prices: the newest already in effect is charged; the model's own fields when none is."""

    model = ModelPrice
    extra = 0
    fields = ["effective_from", "input_price_per_mtok_usd", "output_price_per_mtok_usd",
              "cached_input_price_per_mtok_usd", "source", "created_at"]  # fmt: skip
    readonly_fields = ["created_at"]
    ordering = ["-effective_from"]


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin[Model]):
    """The catalog, with each model's circuit breaker state (shared by every gateway instance)."""

    inlines = [ModelPriceInline]

    list_display = [
        "name", "provider", "kind", "quality_tier", "input_price_per_mtok_usd", "output_price_per_mtok_usd",
        "context_window", "max_output_tokens", "enabled", "price_as_of", "circuit",
    ]  # fmt: skip
    list_editable = ["quality_tier", "enabled"]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # One Redis scan per page, not one per row.
        self._circuits = open_circuits()
        return super().changelist_view(request, extra_context)

    @admin.display(description="circuit")
    def circuit(self, obj: Model) -> str:
        circuits = getattr(self, "_circuits", None)
        if circuits is None:
            circuits = open_circuits()
        return circuits.get(f"{obj.provider.slug}/{obj.name}", "closed")

    list_filter = ["provider", "kind", "quality_tier", "enabled", "supports_tools", "supports_vision"]
    search_fields = ["name"]


@admin.register(ProviderCredential)
class ProviderCredentialAdmin(admin.ModelAdmin[ProviderCredential]):
    """Read-only and masked: organizations set their own keys through the API, which audits it."""

    list_display = ["organization", "provider", "masked", "updated_at"]
    fields = readonly_fields = ("organization", "provider", "masked", "created_by", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
