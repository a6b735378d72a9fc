from __future__ import annotations

import io
import json
import math
import random
import zipfile
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from accounts.models import Organization
from routing.models import TrainedRouter
from routing.semantic import (
    COMPACT_MAX_ENTRIES,
    DEFAULT_MODEL,
    MODELS_DIR,
    N_FEATURES,
    SemanticRouterModel,
    compact_features,
    default_semantic_model,
    feature_matrix,
    features_from_compact,
    fit_semantic_router,
    forget_semantic_models,
    load_semantic_router_at_startup,
    prompt_features,
    semantic_model_for,
    semantic_model_for_sync,
)
from routing.semantic.features import compact_from_matrix
from routing.semantic.model import Hyperparameters
from tests.factories import OrganizationFactory
from tests.routing.harness import in_thread

from .router_data import as_arrays, labelled_rows, prompt_of


@pytest.fixture(autouse=True)
def _forget_models() -> Iterator[None]:
    forget_semantic_models()
    yield
    forget_semantic_models()


@pytest.fixture(scope="module")
def small_model() -> SemanticRouterModel:
    prompts, weak, strong = as_arrays(labelled_rows(40))
    return fit_semantic_router(feature_matrix(prompts), weak.astype(float), strong.astype(float), version="small-v1")


# --- features -------------------------------------------------------------------------------------


def test_prompt_features_are_hashed_raw_counts_of_words_and_word_pairs() -> None:
    features = prompt_features("the cat saw the cat")
    assert features.shape == (1, N_FEATURES)
    # 5 words and 4 word pairs; "the", "cat" and "the cat" each occur twice.
    assert features.sum() == 9
    assert sorted(features.data.tolist()) == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def test_prompt_features_are_stateless() -> None:
    assert (prompt_features("Is 2 + 2 = 4?") != prompt_features("Is 2 + 2 = 4?")).nnz == 0
    assert (prompt_features("Is 2 + 2 = 4?") != prompt_features("Is 2 + 2 = 5?")).nnz > 0


def test_compact_features_round_trip_without_the_text() -> None:
    text = "Which planet is the largest? A. Mars B. Jupiter"
    compact = compact_features(text)
    stored = json.loads(json.dumps(compact))
    assert all(isinstance(i, int) and isinstance(c, float) for i, c in stored)
    assert [i for i, _ in stored] == sorted(i for i, _ in stored)
    assert "planet" not in json.dumps(stored).lower()
    assert (features_from_compact(stored) != prompt_features(text)).nnz == 0


def test_compact_features_keep_the_most_frequent_of_a_long_prompt() -> None:
    text = " ".join(f"word{i}" for i in range(600)) + " eigenvalue" * 50
    compact = compact_features(text)
    assert len(compact) == COMPACT_MAX_ENTRIES
    eigenvalue = prompt_features("eigenvalue").indices[0]
    assert [eigenvalue, 50.0] in compact


def test_compact_from_matrix_matches_compact_features() -> None:
    text = "Prove the theorem about the polynomial."
    assert compact_from_matrix(prompt_features(text)) == compact_features(text)


@pytest.mark.parametrize(
    "entries",
    [[[N_FEATURES, 1.0]], [[-1, 1.0]], [[3, 0.0]], [[3, float("nan")]], [[3]], [[1.5, 2.0]], "not a list"],
)
def test_features_from_compact_rejects_malformed_entries(entries: object) -> None:
    with pytest.raises(ValueError, match=r"entry 0|list of"):
        features_from_compact(entries)  # type: ignore[arg-type]


# --- the model ---------------------------------------------------------------------------------------


def test_score_is_the_chance_the_weak_model_fails_where_the_strong_one_is_right(
    small_model: SemanticRouterModel,
) -> None:
    rng = random.Random(7)
    hard = [small_model.score(prompt_of("hard", rng)) for _ in range(20)]
    easy = [small_model.score(prompt_of("easy", rng)) for _ in range(20)]
    riddles = [small_model.score(prompt_of("riddle", rng)) for _ in range(20)]
    assert all(0.0 <= s <= 1.0 for s in hard + easy + riddles)
    # Both models fail riddles: escalating them gains nothing, so they rank with the easy ones.
    assert min(hard) > max(easy)
    assert min(hard) > max(riddles)
    assert np.mean(hard) > 0.5 > np.mean(riddles)


def test_probabilities_are_per_model(small_model: SemanticRouterModel) -> None:
    weak, strong = small_model.probabilities(prompt_of("riddle", random.Random(3)))
    assert weak < 0.5
    assert strong < 0.5


def test_score_many_and_score_features_agree_with_score(small_model: SemanticRouterModel) -> None:
    texts = ["What is the capital of France?", "Prove the lemma about the eigenvalue of the manifold.", ""]
    many = small_model.score_many(texts)
    for text, batch in zip(texts, many, strict=True):
        assert small_model.score(text) == pytest.approx(batch, abs=1e-9)
        assert small_model.score_features(features_from_compact(compact_features(text))) == pytest.approx(
            batch, abs=1e-9
        )


def test_the_npz_archive_round_trips_without_pickles(small_model: SemanticRouterModel) -> None:
    payload = small_model.to_bytes()
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)
    loaded = SemanticRouterModel.from_bytes(payload)
    assert loaded.version == "small-v1"
    assert loaded.calibration == small_model.calibration
    assert loaded.metadata["hyperparameters"] == {"c": 0.7, "min_df": 3, "max_iter": 3000, "calibration_folds": 5}
    texts = [prompt_of(kind, random.Random(1)) for kind in ("hard", "easy", "riddle")]
    assert loaded.score_many(texts).tolist() == small_model.score_many(texts).tolist()


def test_from_bytes_refuses_what_is_not_a_router_archive(small_model: SemanticRouterModel) -> None:
    with pytest.raises(ValueError, match="not a semantic router archive"):
        SemanticRouterModel.from_bytes(b"definitely not an archive")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, vocabulary=np.arange(3))
    with pytest.raises(ValueError, match="missing"):
        SemanticRouterModel.from_bytes(buffer.getvalue())
    # Another featurizer's model would read different n-grams: refused, not silently wrong.
    with zipfile.ZipFile(io.BytesIO(small_model.to_bytes())) as archive:
        meta = json.loads(np.load(archive.open("meta.npy")).tobytes())
    meta["featurizer"] = "something-else/v9"
    arrays = dict(np.load(io.BytesIO(small_model.to_bytes())))
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with pytest.raises(ValueError, match="featurizer"):
        SemanticRouterModel.from_bytes(buffer.getvalue())


def test_a_head_without_labels_is_constant_and_the_other_ranks() -> None:
    prompts, weak, _strong = as_arrays(labelled_rows(30))
    unknown = np.full(len(prompts), np.nan)
    model = fit_semantic_router(
        feature_matrix(prompts),
        weak.astype(float),
        unknown,
        version="weak-only",
        hyperparameters=Hyperparameters(min_df=2),
    )
    assert not model.strong_coef.any()
    assert model.strong_intercept == pytest.approx(0.0)  # no labels: 0.5
    scores = model.score_many(prompts)
    # Ranked by the weak model's failure alone: hard prompts and riddles above easy ones.
    assert scores[~weak].mean() > scores[weak].mean()


# --- the shipped model -------------------------------------------------------------------------------


def test_the_shipped_model_loads_from_the_repository_with_its_record() -> None:
    model = default_semantic_model()
    assert model is load_semantic_router_at_startup()
    assert model.version == DEFAULT_MODEL == "semantic-mmlu-v1"
    archive = MODELS_DIR / f"{DEFAULT_MODEL}.npz"
    assert archive.stat().st_size <= 2 * 1024 * 1024
    record = json.loads((MODELS_DIR / f"{DEFAULT_MODEL}.json").read_text())
    assert record["version"] == model.version
    assert record["metrics"] == model.metrics
    assert record["training_data"]["prompts"] == 14037
    assert len(record["training_data"]["sha256"]) == 64
    assert record["sklearn_version"] == "1.9.1"
    assert record["command"].startswith("manage.py train_router --data ")
    assert model.metrics["apgr"] >= 0.58
    assert model.metrics["random"]["apgr"] == pytest.approx(0.5, abs=0.02)


def test_the_shipped_model_ranks_a_hard_mmlu_question_above_a_trivial_one() -> None:
    model = default_semantic_model()
    trivial = "Which of the following is the capital city of France?\nA. Berlin\nB. Madrid\nC. Paris\nD. Rome\nAnswer:"
    hard = (
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert model.score(hard) == pytest.approx(0.171, abs=0.01)
    assert model.score(trivial) == pytest.approx(0.130, abs=0.01)
    weak_trivial, _ = model.probabilities(trivial)
    weak_hard, _ = model.probabilities(hard)
    assert weak_trivial > 0.8
    assert weak_hard < 0.5


# --- per organization ----------------------------------------------------------------------------------


def _store_router(organization: Organization, model: SemanticRouterModel, *, active: bool = True) -> TrainedRouter:
    return TrainedRouter.objects.create(
        organization=organization, version=model.version, weights=model.to_bytes(), active=active
    )


@pytest.mark.django_db
def test_an_organization_without_a_router_gets_the_default() -> None:
    organization = OrganizationFactory.create()
    assert semantic_model_for_sync(organization.pk) is default_semantic_model()


@pytest.mark.django_db
def test_an_organization_gets_its_newest_active_router(small_model: SemanticRouterModel) -> None:
    organization = OrganizationFactory.create()
    _store_router(organization, small_model)
    _store_router(organization, replace(small_model, version="small-v2"))
    _store_router(organization, replace(small_model, version="small-v3"), active=False)
    assert semantic_model_for_sync(organization.pk).version == "small-v2"
    assert semantic_model_for_sync(OrganizationFactory.create().pk) is default_semantic_model()


@pytest.mark.django_db
def test_a_router_that_does_not_load_falls_back_to_the_default(caplog: pytest.LogCaptureFixture) -> None:
    organization = OrganizationFactory.create()
    TrainedRouter.objects.create(organization=organization, version="broken", weights=b"junk")
    assert semantic_model_for_sync(organization.pk) is default_semantic_model()
    assert "does not load" in caplog.text


@pytest.mark.django_db
def test_routers_are_cached_until_forgotten(small_model: SemanticRouterModel) -> None:
    organization = OrganizationFactory.create()
    assert semantic_model_for_sync(organization.pk) is default_semantic_model()
    _store_router(organization, small_model)
    assert semantic_model_for_sync(organization.pk) is default_semantic_model()
    forget_semantic_models(organization.pk)
    assert semantic_model_for_sync(organization.pk).version == "small-v1"


@pytest.mark.django_db(transaction=True)
async def test_semantic_model_for_loads_in_a_worker_thread(small_model: SemanticRouterModel) -> None:
    organization = await in_thread(OrganizationFactory.create)
    other = await in_thread(OrganizationFactory.create)
    await in_thread(_store_router, organization, small_model)
    model = await semantic_model_for(organization.pk)
    assert model.version == "small-v1"
    assert await semantic_model_for(organization.pk) is model
    assert await semantic_model_for(other.pk) is default_semantic_model()
    assert not math.isnan(model.score("Prove the theorem."))
