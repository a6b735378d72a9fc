from __future__ import annotations

from typing import Any

from billing.models import UsageRecord
from providers.models import Model

from .models import Feedback
from .semantic.training import RatedAnswer


def usage_answer_get(*, organization_id: int, request_id: str) -> UsageRecord | None:
    """The usage row of the attempt that answered ``request_id`` (a cascade's last), within the organization.

    Another organization's request id finds nothing, exactly like an unknown one.
    """
    return (
        UsageRecord.objects.filter(organization_id=organization_id, request_id=request_id)
        .order_by("-attempt")
        .only("id", "request_id", "attempt", "model", "provider")
        .first()
    )


# --- labels for the semantic router -------------------------------------------------------------

RATED_ANSWERS_LIMIT = 50_000
_CHUNK = 500


def rated_answers_for(*, organization_id: int, limit: int = RATED_ANSWERS_LIMIT) -> list[RatedAnswer]:
    """The organization's newest rated answers (at most ``limit``): the rating, the model of the attempt that
    answered (a cascade's last), its quality tier, and the prompt features of the request's usage rows."""
    ratings = dict(
        Feedback.objects.filter(organization_id=organization_id)
        .order_by("-updated_at", "-id")
        .values_list("request_id", "rating")[:limit]
    )
    answers: dict[str, dict[str, Any]] = {}
    ids = list(ratings)
    for start in range(0, len(ids), _CHUNK):
        rows = (
            UsageRecord.objects.filter(organization_id=organization_id, request_id__in=ids[start : start + _CHUNK])
            .order_by("request_id", "attempt")
            .values("request_id", "model", "prompt_features")
        )
        for row in rows:
            answer = answers.setdefault(row["request_id"], {"prompt_features": None})
            answer["model"] = row["model"]  # the last attempt's, by the ordering
            if row["prompt_features"] is not None:
                answer["prompt_features"] = row["prompt_features"]
    tiers = dict(
        Model.objects.filter(name__in={a["model"] for a in answers.values()}).values_list("name", "quality_tier")
    )
    return [
        RatedAnswer(
            request_id=request_id,
            rating=ratings[request_id],
            model=answer["model"],
            quality_tier=tiers.get(answer["model"]),
            prompt_features=answer["prompt_features"],
        )
        for request_id, answer in answers.items()
    ]
