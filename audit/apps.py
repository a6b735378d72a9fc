from django.apps import AppConfig


class AuditConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "audit"

    def ready(self) -> None:
        from django.contrib.admin.models import LogEntry
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
        from django.db.models.signals import post_save, pre_save

        from . import receivers

        user_logged_in.connect(receivers.on_user_logged_in, dispatch_uid="audit.login")
        user_logged_out.connect(receivers.on_user_logged_out, dispatch_uid="audit.logout")
        user_login_failed.connect(receivers.on_user_login_failed, dispatch_uid="audit.login_failed")
        pre_save.connect(receivers.remember_state_before_admin_save, dispatch_uid="audit.admin_state")
        post_save.connect(receivers.on_log_entry_saved, sender=LogEntry, dispatch_uid="audit.admin_entry")
        receivers.audit_bulk_admin_logging()
