from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from . import selectors
from .models import Feedback

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
