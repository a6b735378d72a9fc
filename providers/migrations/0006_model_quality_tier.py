from typing import Any

from django.db import migrations, models


def set_tiers(apps: Any, schema_editor: Any) -> None:
    from providers.services import quality_tier_default

    Model = apps.get_model("providers", "Model")
    for row in Model.objects.all():
        row.quality_tier = quality_tier_default(row.name)
        row.save(update_fields=["quality_tier"])


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0005_provider_timeouts"),
    ]

    operations = [
        migrations.AddField(
            model_name="model",
            name="quality_tier",
            field=models.PositiveSmallIntegerField(
                choices=[(1, "Economy"), (2, "Standard"), (3, "Premium")],
                default=2,
                help_text="How capable the model is; routers escalate from economy towards premium.",
            ),
        ),
        migrations.RunPython(set_tiers, migrations.RunPython.noop),
    ]
