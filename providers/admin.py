from django.contrib import admin

from .models import Model, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin[Provider]):
    list_display = ["slug", "name", "wire_format", "base_url", "api_key_env", "enabled"]
    list_editable = ["enabled"]


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin[Model]):
    list_display = [
        "name", "provider", "kind", "input_price_per_mtok_usd", "output_price_per_mtok_usd",
        "context_window", "max_output_tokens", "enabled", "price_as_of",
    ]  # fmt: skip
    list_filter = ["provider", "kind", "enabled", "supports_tools", "supports_vision"]
    search_fields = ["name"]
