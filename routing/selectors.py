from __future__ import annotations

from billing.models import UsageRecord


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
