"""Organizations' own provider keys (BYOK) on the hot path.

Each process caches an organization's decrypted keys for
``MUXER_KEY_CACHE_SECONDS`` (so a replaced or deleted key stops being used
within that window, as a revoked API key does), and the catalog as that
organization sees it: the same models, with its own keys in place of the
platform's. An organization without keys of its own costs one dict lookup.
"""

from __future__ import annotations

import dataclasses

from django.conf import settings

from muxer_project.cached_loader import CachedLoader

from . import crypto
from .catalog import Catalog
from .models import ProviderCredential

_views: dict[int, tuple[Catalog, dict[str, str], Catalog]] = {}


def _load(organization_id: int) -> dict[str, str]:
    rows = ProviderCredential.objects.filter(organization_id=organization_id).select_related("provider")
    return {row.provider.slug: crypto.decrypt(row.encrypted_key) for row in rows}


_keys: CachedLoader[int, dict[str, str]] = CachedLoader(
    "provider-keys", _load, lambda: settings.MUXER_KEY_CACHE_SECONDS
)


async def organization_keys(organization_id: int) -> dict[str, str]:
    return await _keys.get(organization_id)


def organization_keys_sync(organization_id: int) -> dict[str, str]:
    """Uncached, for the management API's occasional reads."""
    return _load(organization_id)


def catalog_for(catalog: Catalog, organization_id: int, keys: dict[str, str]) -> Catalog:
    """The catalog with this organization's own keys in place of the platform's."""
    if not keys:
        return catalog
    view = _views.get(organization_id)
    if view is not None and view[0] is catalog and view[1] == keys:
        return view[2]
    models = {
        name: dataclasses.replace(model, credential=keys[model.provider]) if model.provider in keys else model
        for name, model in catalog.models.items()
    }
    derived = Catalog(models=models)
    _views[organization_id] = (catalog, keys, derived)
    return derived


def forget_organization_keys() -> None:
    _keys.forget()
    _views.clear()
