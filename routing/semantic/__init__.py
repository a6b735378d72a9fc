"""The semantic router: a scikit-learn model that scores how much a prompt needs the strong model."""

from .features import (
    COMPACT_MAX_ENTRIES,
    FEATURIZER,
    N_FEATURES,
    compact_features,
    compact_from_matrix,
    feature_matrix,
    features_from_compact,
    prompt_features,
)
from .model import Hyperparameters, SemanticRouterModel, fit_semantic_router
from .store import (
    DEFAULT_MODEL,
    MODELS_DIR,
    default_semantic_model,
    forget_semantic_models,
    load_semantic_router_at_startup,
    semantic_model_for,
    semantic_model_for_sync,
)

__all__ = [
    "COMPACT_MAX_ENTRIES",
    "DEFAULT_MODEL",
    "FEATURIZER",
    "MODELS_DIR",
    "N_FEATURES",
    "Hyperparameters",
    "SemanticRouterModel",
    "compact_features",
    "compact_from_matrix",
    "default_semantic_model",
    "feature_matrix",
    "features_from_compact",
    "fit_semantic_router",
    "forget_semantic_models",
    "load_semantic_router_at_startup",
    "prompt_features",
    "semantic_model_for",
    "semantic_model_for_sync",
]
