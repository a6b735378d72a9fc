"""Training the semantic router: on labelled CSVs (the shipped default), and on an organization's ratings.

An organization's labels come from ``POST /v1/feedback`` ratings joined to the
usage row of the attempt that answered, whose ``prompt_features`` are the
hashed prompt (the gateway keeps no text). The rule:

- an answer from a model below the premium tier rated 4 or 5 means the cheap
  model was right, rated 1 or 2 that it failed; 3 says nothing;
- an answer from a premium model is, by the same rule, a label for the
  strong-model head only: it tells nothing about the cheap model;
- answers without stored features, from models no longer in the catalog, or
  with unreadable features are skipped and counted.

Mixed with base data (``--data``), each organization label weighs
``ORGANIZATION_LABEL_WEIGHT`` base prompts: an organization's traffic is what
its router will see, but a few hundred ratings should not wipe out what
fourteen thousand labelled prompts taught.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from .features import feature_matrix, features_from_compact, stack_features
from .model import Hyperparameters, SemanticRouterModel, fit_semantic_router

PREMIUM_TIER = 3
GOOD_RATING = 4  # and above: the answer was right
BAD_RATING = 2  # and below: it was wrong
ORGANIZATION_LABEL_WEIGHT = 5.0
MIN_CHEAP_MODEL_LABELS = 20
# Fewer prompts than this and n-grams seen in only two of them still count.
SMALL_DATA_ROWS = 1000


class NotEnoughLabels(ValueError):
    """Too few usable ratings, or ratings of one kind only, to train a router on."""


@dataclass(frozen=True)
class RatedAnswer:
    request_id: str
    rating: int
    model: str
    quality_tier: int | None  # None: the model is no longer in the catalog
    prompt_features: Any  # the usage row's compact features, as stored


@dataclass(frozen=True)
class OrganizationLabels:
    features: sp.csr_matrix
    weak_right: np.ndarray  # 1.0, 0.0 or NaN per row
    strong_right: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def weak_labels(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.weak_right)))

    @property
    def strong_labels(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.strong_right)))

    def counts(self) -> dict[str, Any]:
        weak = self.weak_right[~np.isnan(self.weak_right)]
        strong = self.strong_right[~np.isnan(self.strong_right)]
        return {
            "cheap_model_right": int(np.count_nonzero(weak == 1)),
            "cheap_model_wrong": int(np.count_nonzero(weak == 0)),
            "premium_model_right": int(np.count_nonzero(strong == 1)),
            "premium_model_wrong": int(np.count_nonzero(strong == 0)),
            "skipped": dict(sorted(self.skipped.items())),
        }


def organization_labels(answers: Iterable[RatedAnswer]) -> OrganizationLabels:
    rows: list[sp.csr_matrix] = []
    weak: list[float] = []
    strong: list[float] = []
    skipped: Counter[str] = Counter()
    for answer in answers:
        if GOOD_RATING > answer.rating > BAD_RATING:
            skipped["neutral_rating"] += 1
            continue
        if answer.quality_tier is None:
            skipped["model_not_in_catalog"] += 1
            continue
        if answer.prompt_features is None:
            skipped["no_prompt_features"] += 1
            continue
        try:
            features = features_from_compact(answer.prompt_features)
        except (ValueError, TypeError):
            skipped["unreadable_prompt_features"] += 1
            continue
        right = 1.0 if answer.rating >= GOOD_RATING else 0.0
        rows.append(features)
        if answer.quality_tier >= PREMIUM_TIER:
            weak.append(math.nan)
            strong.append(right)
        else:
            weak.append(right)
            strong.append(math.nan)
    return OrganizationLabels(
        features=stack_features(rows),
        weak_right=np.array(weak, dtype=np.float64),
        strong_right=np.array(strong, dtype=np.float64),
        skipped=dict(skipped),
    )


def check_enough_labels(labels: OrganizationLabels) -> None:
    weak = labels.weak_right[~np.isnan(labels.weak_right)]
    if len(weak) < MIN_CHEAP_MODEL_LABELS:
        raise NotEnoughLabels(
            f"{len(weak)} usable ratings of cheaper-than-premium answers; at least {MIN_CHEAP_MODEL_LABELS} are "
            f"needed (ratings of 3 say nothing, and answers without prompt features are skipped: "
            f"{dict(sorted(labels.skipped.items())) or 'none skipped'})."
        )
    if len(np.unique(weak)) < 2:
        kind = "good (4-5)" if weak[0] == 1 else "bad (1-2)"
        raise NotEnoughLabels(f"All {len(weak)} usable ratings of cheaper-than-premium answers are {kind}.")


@dataclass(frozen=True)
class TrainingSet:
    features: sp.csr_matrix
    weak_right: np.ndarray
    strong_right: np.ndarray
    weights: np.ndarray


def training_set(
    labels: OrganizationLabels,
    *,
    base_prompts: Sequence[str] = (),
    base_labels: np.ndarray | None = None,
    organization_weight: float = ORGANIZATION_LABEL_WEIGHT,
) -> TrainingSet:
    """The organization's labels, after the base prompts (both labels known) when there are any."""
    n = labels.features.shape[0]
    if not base_prompts:
        return TrainingSet(labels.features, labels.weak_right, labels.strong_right, np.ones(n))
    assert base_labels is not None
    return TrainingSet(
        features=stack_features([feature_matrix(base_prompts), labels.features]),
        weak_right=np.concatenate([base_labels[:, 0].astype(float), labels.weak_right]),
        strong_right=np.concatenate([base_labels[:, 1].astype(float), labels.strong_right]),
        weights=np.concatenate([np.ones(len(base_prompts)), np.full(n, organization_weight)]),
    )


def hyperparameters_for(rows: int) -> Hyperparameters:
    return Hyperparameters() if rows >= SMALL_DATA_ROWS else Hyperparameters(min_df=2)


def cheap_model_failure_auc(labels: OrganizationLabels, data: TrainingSet, *, folds: int = 5) -> float | None:
    """Cross-validated ROC AUC of the score against the cheap model's rated failures (0.5 = no better than
    chance), over the organization's cheap-model labels; base rows always stay in training."""
    n_base = data.features.shape[0] - labels.features.shape[0]
    own = np.flatnonzero(~np.isnan(labels.weak_right))
    failed = (labels.weak_right[own] == 0).astype(int)
    folds = min(folds, int(np.bincount(failed, minlength=2).min()))
    if folds < 2:
        return None
    # Calibration keeps the ranking, and AUC only sees the ranking.
    params = replace(hyperparameters_for(data.features.shape[0]), calibration_folds=0)
    scores = np.empty(len(own))
    for _train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(own, failed):
        held_out = n_base + own[test]
        keep = np.ones(data.features.shape[0], dtype=bool)
        keep[held_out] = False
        model = fit_semantic_router(
            data.features[keep],
            data.weak_right[keep],
            data.strong_right[keep],
            sample_weight=data.weights[keep],
            hyperparameters=params,
            version="cv",
        )
        scores[test] = model.score_matrix(data.features[held_out])
    return float(roc_auc_score(failed, scores))


def train_organization_router(
    labels: OrganizationLabels,
    *,
    version: str,
    base_prompts: Sequence[str] = (),
    base_labels: np.ndarray | None = None,
    organization_weight: float = ORGANIZATION_LABEL_WEIGHT,
    metadata: dict[str, Any] | None = None,
) -> SemanticRouterModel:
    check_enough_labels(labels)
    data = training_set(
        labels, base_prompts=base_prompts, base_labels=base_labels, organization_weight=organization_weight
    )
    model = fit_semantic_router(
        data.features,
        data.weak_right,
        data.strong_right,
        sample_weight=data.weights,
        hyperparameters=hyperparameters_for(data.features.shape[0]),
        version=version,
        metadata=metadata,
    )
    auc = cheap_model_failure_auc(labels, data)
    metrics = {"cheap_model_failure_auc_cv": None if auc is None else round(auc, 4)}
    return replace(model, metrics=metrics)


def files_sha256(files: Iterable[Path]) -> str:
    """sha256 of the files' bytes, concatenated in the order given."""
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
