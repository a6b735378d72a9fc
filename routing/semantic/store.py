"""Where the gateway gets a semantic router: the shipped default, or an organization's own.

The default ships in ``routing/router_models`` and loads from disk with no
network access. An organization's newest active ``TrainedRouter`` replaces
it for that organization. Each process keeps what it loaded for
``ORGANIZATION_MODEL_SECONDS`` (a newly trained router reaches every process
within that time) and loads in a worker thread, so the event loop never
waits on the database or on unpacking an archive.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from muxer_project.singleflight import SingleFlight

from .model import SemanticRouterModel

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "router_models"
DEFAULT_MODEL = "semantic-mmlu-v1"
ORGANIZATION_MODEL_SECONDS = 60.0


@functools.cache
def default_semantic_model() -> SemanticRouterModel:
    """The router trained on MMLU that ships with the project, loaded once per process."""
    return SemanticRouterModel.from_bytes((MODELS_DIR / f"{DEFAULT_MODEL}.npz").read_bytes())


def load_semantic_router_at_startup() -> SemanticRouterModel:
    """Load the default router now, so the first routed request does not pay for it (from AppConfig.ready)."""
    return default_semantic_model()


def _load_for_organization(organization_id: int) -> SemanticRouterModel:
    from routing.models import TrainedRouter

    row = (
        TrainedRouter.objects.filter(organization_id=organization_id, active=True)
        .order_by("-created_at", "-id")
        .only("id", "version", "weights")
        .first()
    )
    if row is None:
        return default_semantic_model()
    try:
        return SemanticRouterModel.from_bytes(bytes(row.weights))
    except ValueError:
        # A broken row must not stop the organization's traffic; the default still routes it.
        logger.exception("trained router %s of organization %s does not load", row.pk, organization_id)
        return default_semantic_model()


def _load_in_worker(organization_id: int) -> SemanticRouterModel:
    """The load for ``semantic_model_for``, on a worker thread whose connection nothing else retires."""
    try:
        return _load_for_organization(organization_id)
    finally:
        close_old_connections()


_cache: dict[int, tuple[float, SemanticRouterModel]] = {}
_loads = SingleFlight()


def _fresh(organization_id: int) -> SemanticRouterModel | None:
    entry = _cache.get(organization_id)
    if entry is not None and time.monotonic() - entry[0] < ORGANIZATION_MODEL_SECONDS:
        return entry[1]
    return None


def _store(organization_id: int, model: SemanticRouterModel) -> SemanticRouterModel:
    _cache[organization_id] = (time.monotonic(), model)
    return model


async def semantic_model_for(organization_id: int) -> SemanticRouterModel:
    """The organization's newest active trained router, else the shipped default."""
    fresh = _fresh(organization_id)
    if fresh is not None:
        return fresh
    load = sync_to_async(functools.partial(_load_in_worker, organization_id), thread_sensitive=False)
    return _store(organization_id, await _loads.run(("semantic-router", organization_id), load))


def semantic_model_for_sync(organization_id: int) -> SemanticRouterModel:
    return _fresh(organization_id) or _store(organization_id, _load_for_organization(organization_id))


def forget_semantic_models(organization_id: int | None = None) -> None:
    """Drop cached organization routers (one, or all); the default stays loaded."""
    if organization_id is None:
        _cache.clear()
    else:
        _cache.pop(organization_id, None)
