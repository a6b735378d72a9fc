from typing import Any

from django.db import migrations, models
from django.db.models import F


def existing_users_are_verified(apps: Any, schema_editor: Any) -> None:
    """People who had an account before sign-up existed were admitted by an operator or an invitation."""
    User = apps.get_model("accounts", "User")
    User.objects.filter(email_verified_at=None).update(email_verified_at=F("date_joined"))


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0005_governance"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="email_verified_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(existing_users_are_verified, migrations.RunPython.noop),
    ]
