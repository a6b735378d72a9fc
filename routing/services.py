from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Organization

from . import selectors
from .models import Feedback, TrainedRouter
from .semantic import forget_semantic_models
from .semantic.training import (
    ORGANIZATION_LABEL_WEIGHT,
    check_enough_labels,
    organization_labels,
    train_organization_router,
)

if TYPE_CHECKING:
    from .evaluation import LabelledPrompts

# --- feedback -------------------------------------------------------------------------------


class UnknownRequest(LookupError):
    """The request id names no usage row of the organization (or names another organization's)."""


@dataclass(frozen=True)
class RecordedFeedback:
    feedback: Feedback
    model: str
    created: bool


@transaction.atomic
def feedback_record(
    *, organization_id: int, api_key_id: int | None, request_id: str, rating: int, comment: str | None = None
) -> RecordedFeedback:
    """Record or replace the organization's rating of one request; a label for retraining its router.

    ``comment=None`` keeps the comment already given (none, on a first rating).
    Raises :class:`UnknownRequest` unless the request went through this organization.
    """
    answer = selectors.usage_answer_get(organization_id=organization_id, request_id=request_id)
    if answer is None:
        raise UnknownRequest(request_id)
    values: dict[str, Any] = {"rating": rating, "api_key_id": api_key_id}
    if comment is not None:
        values["comment"] = comment
    feedback, created = Feedback.objects.update_or_create(
        organization_id=organization_id, request_id=request_id, defaults=values
    )
    return RecordedFeedback(feedback=feedback, model=answer.model, created=created)


# --- the organization's own semantic router -------------------------------------------------------


def trained_router_create(
    *,
    organization: Organization,
    base: LabelledPrompts | None = None,
    base_description: dict[str, Any] | None = None,
    organization_weight: float = ORGANIZATION_LABEL_WEIGHT,
) -> TrainedRouter:
    """Train a semantic router on the organization's ratings (and ``base`` data, if given), store it as the
    organization's active router, and retire the older ones. Raises ``NotEnoughLabels``."""
    answers = selectors.rated_answers_for(organization_id=organization.pk)
    labels = organization_labels(answers)
    check_enough_labels(labels)
    now = timezone.now()
    version = f"{organization.slug[:40]}-{now:%Y%m%d%H%M%S}"
    trained_on: dict[str, Any] = {
        "rated_answers": len(answers),
        "organization_labels": labels.counts(),
        "organization_weight": organization_weight if base is not None else 1.0,
        "base_data": {**(base_description or {}), "prompts": len(base)} if base is not None else None,
    }
    model = train_organization_router(
        labels,
        version=version,
        base_prompts=base.prompts if base is not None else (),
        base_labels=base.labels if base is not None else None,
        organization_weight=organization_weight,
        metadata={"created": now.isoformat(), "trained_on": trained_on},
    )
    with transaction.atomic():
        TrainedRouter.objects.filter(organization=organization, active=True).update(active=False)
        router = TrainedRouter.objects.create(
            organization=organization,
            version=version,
            weights=model.to_bytes(),
            metrics=model.metrics,
            trained_on=trained_on,
            active=True,
        )
    # This process routes with it at once; the others within ORGANIZATION_MODEL_SECONDS.
    forget_semantic_models(organization.pk)
    return router
