"""Organizations' own provider keys (BYOK) on the hot path.

Each process caches an organization's decrypted keys for
``MUXER_KEY_CACHE_SECONDS`` (so a replaced or deleted key stops being used
within that window, as a revoked API key does), and the catalog as that
organization sees it: the same models, with its own keys in place of the
platform's. An organization without keys of its own costs one dict lookup.
"""

from __future__ import annotations

import dataclasses
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from muxer_project.singleflight import SingleFlight

from . import crypto
from .catalog import Catalog
from .models import ProviderCredential

_keys: dict[int, tuple[float, dict[str, str]]] = {}
_views: dict[int, tuple[Catalog, dict[str, str], Catalog]] = {}
_loads = SingleFlight()


def _load(organization_id: int) -> dict[str, str]:
    rows = ProviderCredential.objects.filter(organization_id=organization_id).select_related("provider")
    return {row.provider.slug: crypto.decrypt(row.encrypted_key) for row in rows}


def _load_in_worker(organization_id: int) -> dict[str, str]:
    try:
        return _load(organization_id)
    finally:
        close_old_connections()


async def organization_keys(organization_id: int) -> dict[str, str]:
    hit = _keys.get(organization_id)
    if hit is not None and time.monotonic() - hit[0] < settings.MUXER_KEY_CACHE_SECONDS:
        return hit[1]
    keys = await _loads.run(
        organization_id, lambda: sync_to_async(_load_in_worker, thread_sensitive=False)(organization_id)
    )
    _keys[organization_id] = (time.monotonic(), keys)
    return keys


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
    _keys.clear()
    _views.clear()
