from django.apps import AppConfig


class RoutingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "routing"

    def ready(self) -> None:
        from . import openapi  # noqa: F401 - registers the API key scheme with drf-spectacular
