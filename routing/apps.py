from django.apps import AppConfig


class RoutingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "routing"

    def ready(self) -> None:
        from . import openapi  # noqa: F401 - registers the API key scheme with drf-spectacular
        from .semantic import load_semantic_router_at_startup

        # The shipped semantic router loads from disk now, not on the first routed request.
        load_semantic_router_at_startup()
