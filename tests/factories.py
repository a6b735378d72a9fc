from __future__ import annotations

from datetime import datetime
from typing import Any

import factory
from django.utils import timezone

from accounts import services
from accounts.models import Membership, Organization, Role, Team, User


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    name = factory.Faker("name")
    password = factory.django.Password("correct horse battery staple")
    # Users admitted by a test have proved their address; sign-up tests make unverified ones themselves.
    email_verified_at = factory.LazyFunction(timezone.now)


class OrganizationFactory(factory.django.DjangoModelFactory[Organization]):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")


class TeamFactory(factory.django.DjangoModelFactory[Team]):
    class Meta:
        model = Team

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Team {n}")


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.MEMBER


def issue_key(
    organization: Organization,
    *,
    created_by: User | None = None,
    name: str = "test key",
    expires_at: datetime | None = None,
    allowed_models: tuple[str, ...] = (),
    **extra: Any,
) -> services.IssuedKey:
    return services.api_key_create(
        organization=organization,
        name=name,
        created_by=created_by,
        expires_at=expires_at,
        allowed_models=allowed_models,
        **extra,
    )
