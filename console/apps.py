from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The team console: server-rendered pages over the management API, and its WebSockets."""

    name = "console"
    default_auto_field = "django.db.models.BigAutoField"
