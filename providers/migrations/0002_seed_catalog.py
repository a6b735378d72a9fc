from typing import Any

from django.db import migrations


def seed(apps: Any, schema_editor: Any) -> None:
    from providers.catalog_seed import MODELS, PROVIDERS
    from providers.services import _MODEL_FIELDS, _PROVIDER_FIELDS, FAKE_MODELS, FAKE_PROVIDER

    Provider = apps.get_model("providers", "Provider")
    Model = apps.get_model("providers", "Model")
    by_slug = {}
    for data in [*PROVIDERS, FAKE_PROVIDER]:
        by_slug[data["slug"]], _ = Provider.objects.update_or_create(
            slug=data["slug"], defaults={f: data[f] for f in _PROVIDER_FIELDS}
        )
    for data in [*MODELS, *FAKE_MODELS]:
        Model.objects.update_or_create(
            name=data["name"],
            defaults={"provider": by_slug[data["provider"]], **{f: data.get(f) for f in _MODEL_FIELDS}},
        )


class Migration(migrations.Migration):
    dependencies = [("providers", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
