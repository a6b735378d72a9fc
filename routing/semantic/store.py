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
from pathlib import Path

from muxer_project.cached_loader import CachedLoader

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


_models: CachedLoader[int, SemanticRouterModel] = CachedLoader(
    "semantic-router", _load_for_organization, lambda: ORGANIZATION_MODEL_SECONDS
)


async def semantic_model_for(organization_id: int) -> SemanticRouterModel:
    """The organization's newest active trained router, else the shipped default."""
    return await _models.get(organization_id)


def semantic_model_for_sync(organization_id: int) -> SemanticRouterModel:
    return _models.get_sync(organization_id)


def forget_semantic_models(organization_id: int | None = None) -> None:
    """Drop cached organization routers (one, or all); the default stays loaded."""
    _models.forget(organization_id)
