from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import APIKey, Organization
from billing.models import UsageRecord, UsageStatus
from routing.models import Feedback, TrainedRouter
from routing.semantic import (
    SemanticRouterModel,
    compact_features,
    default_semantic_model,
    forget_semantic_models,
    semantic_model_for_sync,
)
from tests.factories import OrganizationFactory, issue_key

from .router_data import labelled_rows, prompt_of, write_contamination, write_csv


@pytest.fixture(autouse=True)
def _forget_models() -> Iterator[None]:
    forget_semantic_models()
    yield
    forget_semantic_models()


def _train(*args: str) -> str:
    out = StringIO()
    call_command("train_router", *args, stdout=out)
    return out.getvalue()


# --- from labelled files -----------------------------------------------------------------------------


def test_train_router_writes_the_archive_and_its_record(tmp_path: Path) -> None:
    rows = labelled_rows(40)
    write_csv(tmp_path / "data" / "responses" / "a.csv", rows)
    write_contamination(tmp_path / "data", [rows[0][0]])
    output = tmp_path / "models" / "tiny-v1"
    output.parent.mkdir()
    printed = _train("--data", str(tmp_path / "data"), "--output", str(output), "--description", "synthetic")
    assert printed.startswith(f"{output}.npz: 119 prompts,")
    model = SemanticRouterModel.from_bytes(output.with_suffix(".npz").read_bytes())
    record = json.loads(output.with_suffix(".json").read_text())
    assert model.version == record["version"] == "tiny-v1"
    assert record["metrics"] == model.metrics
    assert record["metrics"]["apgr"] > 0.75
    assert record["metrics"]["random"]["apgr"] == pytest.approx(0.5, abs=0.05)
    assert record["training_data"]["prompts"] == 119
    assert record["training_data"]["contaminated_dropped"] == 1
    assert record["training_data"]["description"] == "synthetic"
    assert record["command"] == (
        f"manage.py train_router --data {tmp_path / 'data'} --output {output} --description synthetic"
    )
    rng = random.Random(5)
    assert model.score(prompt_of("hard", rng)) > model.score(prompt_of("easy", rng))


def test_train_router_needs_one_target(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="either --organization SLUG or --output PATH"):
        _train("--data", str(tmp_path))
    with pytest.raises(CommandError, match="--output needs --data"):
        _train("--output", str(tmp_path / "x"))


def test_train_router_names_a_missing_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", labelled_rows(10))
    with pytest.raises(CommandError, match="no column 'gone'"):
        _train("--data", str(path), "--strong-column", "gone", "--output", str(tmp_path / "m"))


# --- from an organization's ratings ---------------------------------------------------------------------


def _rate(
    organization: Organization,
    key: APIKey,
    prompt: str,
    *,
    model: str,
    rating: int,
    features: bool = True,
    escalated_from: str | None = None,
) -> None:
    request_id = uuid.uuid4().hex
    attempts = [escalated_from, model] if escalated_from else [model]
    for attempt, name in enumerate(attempts, start=1):
        UsageRecord.objects.create(
            request_id=request_id,
            attempt=attempt,
            organization=organization,
            api_key=key,
            model=name,
            provider="fake",
            status=UsageStatus.OK if name == model else UsageStatus.ESCALATED,
            http_status=200,
            created_at=timezone.now(),
            prompt_features=compact_features(prompt) if features and attempt == 1 else None,
        )
    Feedback.objects.create(organization=organization, request_id=request_id, rating=rating)


def _rate_many(organization: Organization, key: APIKey, *, n: int = 15, seed: int = 0) -> None:
    """Cheap answers: good on easy prompts, bad on hard ones; premium answers to hard prompts: good."""
    rng = random.Random(seed)
    for _ in range(n):
        _rate(organization, key, prompt_of("easy", rng), model="fake-small", rating=5)
        _rate(organization, key, prompt_of("hard", rng), model="fake-small", rating=1)
        _rate(organization, key, prompt_of("hard", rng), model="fake-large", rating=4)


@pytest.fixture
def key(organization: Organization, catalog: None) -> APIKey:
    return issue_key(organization).api_key


@pytest.mark.django_db
def test_an_organization_trains_its_router_from_its_ratings(organization: Organization, key: APIKey) -> None:
    _rate_many(organization, key)
    _rate(organization, key, "neutral", model="fake-small", rating=3)
    _rate(organization, key, "no features kept", model="fake-small", rating=5, features=False)
    _rate(
        organization,
        key,
        prompt_of("hard", random.Random(9)),
        model="fake-large",
        rating=5,
        escalated_from="fake-small",
    )
    printed = _train("--organization", organization.slug)

    router = TrainedRouter.objects.get(organization=organization)
    assert router.active
    assert router.version.startswith(f"{organization.slug}-")
    assert router.trained_on["organization_labels"] == {
        "cheap_model_right": 15,
        "cheap_model_wrong": 15,
        "premium_model_right": 16,  # the cascade's answer came from the premium model
        "premium_model_wrong": 0,
        "skipped": {"neutral_rating": 1, "no_prompt_features": 1},
    }
    assert router.trained_on["base_data"] is None
    assert router.metrics["cheap_model_failure_auc_cv"] > 0.9
    assert f"{organization.slug}: router {router.version} is active" in printed

    model = semantic_model_for_sync(organization.pk)
    assert model.version == router.version
    rng = random.Random(11)
    assert model.score(prompt_of("hard", rng)) > model.score(prompt_of("easy", rng))
    assert semantic_model_for_sync(OrganizationFactory.create().pk) is default_semantic_model()


@pytest.mark.django_db
def test_retraining_retires_the_older_router(organization: Organization, key: APIKey) -> None:
    _rate_many(organization, key)
    _train("--organization", organization.slug)
    first = TrainedRouter.objects.get(organization=organization)
    _rate_many(organization, key, n=5, seed=1)
    TrainedRouter.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    _train("--organization", organization.slug)
    routers = list(TrainedRouter.objects.filter(organization=organization).order_by("created_at"))
    assert [r.active for r in routers] == [False, True]
    assert routers[1].trained_on["organization_labels"]["cheap_model_right"] == 20


@pytest.mark.django_db
def test_an_organization_router_can_mix_in_base_data(organization: Organization, key: APIKey, tmp_path: Path) -> None:
    _rate_many(organization, key, n=10)
    path = write_csv(tmp_path / "base.csv", labelled_rows(20))
    _train("--organization", organization.slug, "--data", str(path), "--organization-weight", "3")
    router = TrainedRouter.objects.get(organization=organization)
    assert router.trained_on["base_data"]["prompts"] == 60
    assert router.trained_on["organization_weight"] == 3.0
    model = SemanticRouterModel.from_bytes(bytes(router.weights))
    # The base data labels both heads; alone, the organization's ratings would leave riddles unexplained.
    assert model.strong_coef.any()


@pytest.mark.django_db
def test_too_few_ratings_are_refused(organization: Organization, key: APIKey) -> None:
    _rate_many(organization, key, n=9)  # 18 cheap-model labels
    with pytest.raises(CommandError, match="18 usable ratings of cheaper-than-premium answers; at least 20"):
        _train("--organization", organization.slug)
    assert not TrainedRouter.objects.exists()


@pytest.mark.django_db
def test_ratings_of_one_kind_are_refused(organization: Organization, key: APIKey) -> None:
    rng = random.Random(0)
    for _ in range(25):
        _rate(organization, key, prompt_of("easy", rng), model="fake-small", rating=4)
    with pytest.raises(CommandError, match="All 25 usable ratings of cheaper-than-premium answers are good"):
        _train("--organization", organization.slug)


@pytest.mark.django_db
def test_another_organizations_ratings_are_not_used(organization: Organization, key: APIKey) -> None:
    other = OrganizationFactory.create()
    _rate_many(other, issue_key(other).api_key)
    with pytest.raises(CommandError, match="0 usable ratings"):
        _train("--organization", organization.slug)


@pytest.mark.django_db
def test_an_unknown_organization_is_an_error() -> None:
    with pytest.raises(CommandError, match="No organization with the slug 'nobody'"):
        _train("--organization", "nobody")
