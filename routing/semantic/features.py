"""The semantic router's featurizer: hashed word n-gram counts, with no fitted state.

Because nothing is fitted, the gateway can store a prompt's features on its
usage row (``compact_features``, no text) and an organization can retrain on
them months later with the same featurizer. Hashed n-grams are not text, but
a dictionary attack can guess common words from them: treat them as
sensitive, not as anonymous.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

# Changing any of these changes every feature index: bump FEATURIZER with them, and old
# models and stored features stop matching (models record the featurizer they were trained with).
FEATURIZER = "hashed-words-1-2/v1"
N_FEATURES = 2**18
NGRAM_RANGE = (1, 2)
# Words, numbers and single symbols: "=", "$", "^" and "(" tell maths from trivia.
TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"
# A usage row keeps at most this many [index, count] pairs; a long prompt keeps its most frequent.
COMPACT_MAX_ENTRIES = 400

_hasher = HashingVectorizer(
    ngram_range=NGRAM_RANGE,
    n_features=N_FEATURES,
    token_pattern=TOKEN_PATTERN,
    alternate_sign=False,
    norm=None,
    dtype=np.float64,
)


def feature_matrix(texts: Iterable[str]) -> sp.csr_matrix:
    """One row of hashed raw n-gram counts per text."""
    return sp.csr_matrix(_hasher.transform(texts))


def prompt_features(text: str) -> sp.csr_matrix:
    """The prompt as one row of ``N_FEATURES`` hashed raw n-gram counts."""
    return feature_matrix((text,))


def compact_from_matrix(features: sp.csr_matrix) -> list[list[float]]:
    """The first row of ``features`` as JSON-storable [[index, count], ...], sorted by index."""
    row = features[0] if features.shape[0] != 1 else features
    row = sp.csr_matrix(row)
    indices = row.indices.astype(np.int64)
    counts = row.data
    if len(indices) > COMPACT_MAX_ENTRIES:
        # The most frequent n-grams, ties broken by index so the choice is deterministic.
        keep = np.lexsort((indices, -counts))[:COMPACT_MAX_ENTRIES]
        indices, counts = indices[keep], counts[keep]
    order = np.argsort(indices)
    return [[int(i), float(c)] for i, c in zip(indices[order], counts[order], strict=True)]


def compact_features(text: str) -> list[list[float]]:
    """``prompt_features`` as at most ``COMPACT_MAX_ENTRIES`` [index, count] pairs, for a usage row."""
    return compact_from_matrix(prompt_features(text))


def features_from_compact(entries: Sequence[Sequence[float]]) -> sp.csr_matrix:
    """The one-row matrix that ``compact_features`` stored. Raises ValueError on malformed entries."""
    if not isinstance(entries, list | tuple):
        raise ValueError("compact features must be a list of [index, count] pairs")
    indices = np.empty(len(entries), dtype=np.int64)
    counts = np.empty(len(entries), dtype=np.float64)
    for n, entry in enumerate(entries):
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ValueError(f"entry {n} is not an [index, count] pair")
        index, count = entry
        if not float(index).is_integer() or not 0 <= index < N_FEATURES:
            raise ValueError(f"entry {n} has an index outside 0..{N_FEATURES - 1}")
        if not np.isfinite(count) or count <= 0:
            raise ValueError(f"entry {n} has a count that is not a positive number")
        indices[n], counts[n] = int(index), float(count)
    matrix = sp.csr_matrix((counts, (np.zeros_like(indices), indices)), shape=(1, N_FEATURES))
    matrix.sum_duplicates()
    return matrix


def stack_features(rows: Sequence[sp.csr_matrix]) -> sp.csr_matrix:
    if not rows:
        return sp.csr_matrix((0, N_FEATURES), dtype=np.float64)
    return sp.csr_matrix(sp.vstack(rows, format="csr"))
