"""Judging routers on labelled prompts, by RouteLLM's method (routellm/evals/evaluate.py).

Labelled data is one CSV file or a folder of them (searched recursively): a
prompt column and two boolean columns saying whether the weak and the strong
model answered correctly. Other columns are ignored. A
``contaminated_prompts.jsonl`` beside a file, one folder up (RouteLLM's
``mmlu/contaminated_prompts.jsonl`` with ``mmlu/responses/*.csv``), or in the
folder given, lists prompts (field ``eval_prompt``) that are dropped.

A router gives each prompt a score; prompts at or above a threshold go to the
strong model. The 11 edges of 10 quantile bins of the scores are the
thresholds (the last one strict, so it sends nothing to the strong model),
and each gives a point (share of strong calls, accuracy). From the points:

- PGR = (accuracy - weak) / (strong - weak), the performance gap recovered;
- APGR = the area under PGR over 0..1 of strong calls (random routing: 0.5);
- CPT(x%) = the share of strong calls at which PGR first reaches x, linearly
  interpolated between points (RouteLLM's ``np.interp``, which assumes the
  curve rises; this is the same where it does);
- cost share @95% = the cost of routing relative to sending everything to
  the strong model, at the share of strong calls where accuracy first
  reaches 95% of the strong model's (interpolated like CPT).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .semantic import feature_matrix, fit_semantic_router

# RouteLLM's column names: the weak model is Mixtral-8x7B-Instruct, the strong one GPT-4-1106-preview.
DEFAULT_PROMPT_COLUMN = "prompt"
DEFAULT_WEAK_COLUMNS = ("weak_right", "mistralai/Mixtral-8x7B-Instruct-v0.1")
DEFAULT_STRONG_COLUMNS = ("strong_right", "gpt-4-1106-preview")
CONTAMINATION_FILE = "contaminated_prompts.jsonl"

# Cost of a weak call relative to a strong one, from list prices per million tokens, input + output
# (as of 2024): Mixtral-8x7B-Instruct (Mistral's open-mixtral-8x7b) $0.70 + $0.70 = $1.40;
# gpt-4-1106-preview $10 + $30 = $40. 1.40 / 40 = 0.035.
DEFAULT_WEAK_COST_RATIO = 0.035

BINS = 10
QUALITY_TARGET = 0.95
RANDOM_SEEDS = 20

_TRUE = frozenset({"true", "1", "1.0", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "0.0", "no", "n", "f"})


class LabelledDataError(ValueError):
    """The labelled data cannot be read: a missing path, a missing column, a value that is not a boolean."""


@dataclass(frozen=True)
class LabelledPrompts:
    prompts: list[str]
    weak_right: np.ndarray  # bool per prompt
    strong_right: np.ndarray  # bool per prompt
    files: list[Path] = field(default_factory=list)
    contaminated_dropped: int = 0

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def labels(self) -> np.ndarray:
        """(n, 2) bools: weak model right, strong model right."""
        return np.column_stack([self.weak_right, self.strong_right])

    def subset(self, rows: np.ndarray) -> LabelledPrompts:
        return LabelledPrompts(
            prompts=[self.prompts[i] for i in rows],
            weak_right=self.weak_right[rows],
            strong_right=self.strong_right[rows],
            files=self.files,
        )


def labelled_csv_files(path: Path) -> list[Path]:
    if not path.exists():
        raise LabelledDataError(f"{path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.csv") if p.is_file())
    if not files:
        raise LabelledDataError(f"{path} holds no .csv files")
    return files


def contamination_files(path: Path, files: Iterable[Path]) -> list[Path]:
    places = {path} if path.is_dir() else set()
    for file in files:
        places.update((file.parent, file.parent.parent))
    return sorted(p / CONTAMINATION_FILE for p in places if (p / CONTAMINATION_FILE).is_file())


def _contaminated_prompts(files: Iterable[Path]) -> set[str]:
    prompts: set[str] = set()
    for file in files:
        with file.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LabelledDataError(f"{file}:{number}: not JSON ({exc.msg})") from exc
                if not isinstance(entry, dict) or not isinstance(entry.get("eval_prompt"), str):
                    raise LabelledDataError(f"{file}:{number}: no 'eval_prompt' string")
                prompts.add(entry["eval_prompt"])
    return prompts


def _column(header: Sequence[str], given: str | None, defaults: Sequence[str], what: str, file: Path) -> str:
    if given is not None:
        if given not in header:
            raise LabelledDataError(f"{file} has no column {given!r} ({what}); its columns: {', '.join(header)}")
        return given
    for name in defaults:
        if name in header:
            return name
    raise LabelledDataError(
        f"{file} has none of the default {what} columns ({', '.join(repr(d) for d in defaults)}); "
        f"name one (its columns: {', '.join(header)})"
    )


def _boolean(value: str | None, *, file: Path, line: int, column: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LabelledDataError(f"{file}:{line}: column {column!r} is {value!r}, not True/False/1/0")


def load_labelled_prompts(
    path: Path | str,
    *,
    prompt_column: str = DEFAULT_PROMPT_COLUMN,
    weak_column: str | None = None,
    strong_column: str | None = None,
) -> LabelledPrompts:
    """The labelled prompts of a CSV file or a folder of them, contaminated prompts dropped."""
    path = Path(path)
    files = labelled_csv_files(path)
    contaminated = _contaminated_prompts(contamination_files(path, files))
    # RouteLLM's prompts carry whole passages; the csv module's default field limit is 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))
    prompts: list[str] = []
    weak: list[bool] = []
    strong: list[bool] = []
    dropped = 0
    for file in files:
        with file.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            if prompt_column not in header:
                raise LabelledDataError(
                    f"{file} has no prompt column {prompt_column!r}; its columns: {', '.join(header) or '(none)'}"
                )
            weak_name = _column(header, weak_column, DEFAULT_WEAK_COLUMNS, "weak-model", file)
            strong_name = _column(header, strong_column, DEFAULT_STRONG_COLUMNS, "strong-model", file)
            for row in reader:
                prompt = row[prompt_column]
                if prompt in contaminated:
                    dropped += 1
                    continue
                line = reader.line_num
                prompts.append(prompt)
                weak.append(_boolean(row[weak_name], file=file, line=line, column=weak_name))
                strong.append(_boolean(row[strong_name], file=file, line=line, column=strong_name))
    if not prompts:
        raise LabelledDataError(f"{path} has no labelled prompts left")
    return LabelledPrompts(
        prompts=prompts,
        weak_right=np.array(weak, dtype=bool),
        strong_right=np.array(strong, dtype=bool),
        files=files,
        contaminated_dropped=dropped,
    )


# --- metrics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterMetrics:
    """Shares are fractions of calls (0..1); NaN where a target is never reached."""

    apgr: float
    cpt50: float
    cpt80: float
    cost_share_at_95: float
    strong_share_at_95: float

    @classmethod
    def mean(cls, many: Sequence[RouterMetrics]) -> RouterMetrics:
        def average(name: str) -> float:
            values = [getattr(m, name) for m in many]
            return math.nan if any(math.isnan(v) for v in values) else float(np.mean(values))

        return cls(**{f.name: average(f.name) for f in fields(cls)})

    def as_dict(self) -> dict[str, float | None]:
        return {f.name: None if math.isnan(v := getattr(self, f.name)) else round(v, 6) for f in fields(self)}


def threshold_points(
    scores: np.ndarray, weak_right: np.ndarray, strong_right: np.ndarray, *, bins: int = BINS
) -> np.ndarray:
    """(share of strong calls, accuracy) at each quantile-edge threshold, by increasing share."""
    scores = np.asarray(scores, dtype=np.float64)
    edges = np.quantile(scores, np.linspace(0.0, 1.0, bins + 1))
    points = []
    for i, threshold in enumerate(edges):
        strong = scores > threshold if i == bins else scores >= threshold
        accuracy = np.where(strong, strong_right, weak_right).mean()
        points.append((strong.mean(), accuracy))
    ordered = np.array(points, dtype=np.float64)
    return ordered[np.argsort(ordered[:, 0], kind="stable")]


def share_reaching(points: np.ndarray, accuracy: float) -> float:
    """The share of strong calls where the curve first reaches ``accuracy``, interpolated; NaN if never."""
    if points[0, 1] >= accuracy:
        return float(points[0, 0])
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if y0 < accuracy <= y1:
            return float(x0 + (accuracy - y0) / (y1 - y0) * (x1 - x0))
    return math.nan


def router_metrics(
    scores: np.ndarray,
    weak_right: np.ndarray,
    strong_right: np.ndarray,
    *,
    weak_cost_ratio: float = DEFAULT_WEAK_COST_RATIO,
) -> RouterMetrics:
    weak_accuracy = float(np.mean(weak_right))
    strong_accuracy = float(np.mean(strong_right))
    points = threshold_points(scores, weak_right, strong_right)
    gap = strong_accuracy - weak_accuracy
    if gap > 0:
        area = float(np.trapezoid(points[:, 1], points[:, 0]))
        span = float(points[-1, 0] - points[0, 0])
        apgr = (area - weak_accuracy * span) / (gap * span) if span > 0 else math.nan
        cpt50 = share_reaching(points, weak_accuracy + 0.5 * gap)
        cpt80 = share_reaching(points, weak_accuracy + 0.8 * gap)
    else:  # the strong model is no better: there is no gap to recover
        apgr = cpt50 = cpt80 = math.nan
    at_95 = share_reaching(points, QUALITY_TARGET * strong_accuracy)
    cost = math.nan if math.isnan(at_95) else weak_cost_ratio * (1.0 - at_95) + at_95
    return RouterMetrics(apgr=apgr, cpt50=cpt50, cpt80=cpt80, cost_share_at_95=cost, strong_share_at_95=at_95)


def random_metrics(
    weak_right: np.ndarray, strong_right: np.ndarray, *, weak_cost_ratio: float, seed: int = 0
) -> RouterMetrics:
    """Random routing, averaged over ``RANDOM_SEEDS`` draws of uniform scores."""
    rng = np.random.default_rng(seed)
    draws = [
        router_metrics(rng.random(len(weak_right)), weak_right, strong_right, weak_cost_ratio=weak_cost_ratio)
        for _ in range(RANDOM_SEEDS)
    ]
    return RouterMetrics.mean(draws)


def oracle_scores(weak_right: np.ndarray, strong_right: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """What an oracle would score: first the prompts only the strong model gets right, then those where the
    choice changes nothing, last those only the weak model gets right; random order within each group."""
    weak_right = np.asarray(weak_right, dtype=bool)
    strong_right = np.asarray(strong_right, dtype=bool)
    group = 2.0 * (~weak_right & strong_right) + 1.0 * (weak_right == strong_right)
    return np.asarray(group + 0.5 * np.random.default_rng(seed).random(len(group)))


# --- routers to compare ---------------------------------------------------------------------------

Scorer = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class RouterRow:
    """A router to evaluate. ``fit(prompts, labels)`` learns from training prompts, where ``labels`` is the
    (n, 2) bool array of (weak model right, strong model right), and returns a scorer: prompts -> scores,
    higher meaning "send to the strong model". A router with nothing to learn ignores the labels."""

    name: str
    fit: Callable[[Sequence[str], np.ndarray], Scorer]


def _fit_semantic(prompts: Sequence[str], labels: np.ndarray) -> Scorer:
    model = fit_semantic_router(
        feature_matrix(prompts), labels[:, 0].astype(float), labels[:, 1].astype(float), version="evaluation"
    )
    return model.score_many


# The rows ``evaluate_router`` prints after its random and oracle references. Append to add a router.
ROUTER_ROWS: list[RouterRow] = [RouterRow("semantic", _fit_semantic)]


def _heuristic_rows() -> list[RouterRow]:
    """The heuristic router (nothing to learn), and the hybrid of it with the semantic router."""
    try:
        from .strategies import hybrid_score
        from .strategies.heuristic import complexity_score
    except ImportError:  # the strategies are optional to this module
        return []

    def heuristic(texts: Sequence[str]) -> np.ndarray:
        return np.array([complexity_score(text) for text in texts], dtype=np.float64)

    def fit_hybrid(prompts: Sequence[str], labels: np.ndarray) -> Scorer:
        semantic = _fit_semantic(prompts, labels)

        def score(texts: Sequence[str]) -> np.ndarray:
            pairs = zip(heuristic(texts), semantic(texts), strict=True)
            return np.array([hybrid_score(float(h), float(s)) for h, s in pairs], dtype=np.float64)

        return score

    return [RouterRow("heuristic", lambda _prompts, _labels: heuristic), RouterRow("hybrid", fit_hybrid)]


ROUTER_ROWS.extend(_heuristic_rows())


@dataclass(frozen=True)
class RouterResult:
    name: str
    metrics: RouterMetrics
    folds: list[RouterMetrics] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_router`` prints: one result per router, on data with these model accuracies."""

    results: list[RouterResult]
    weak_accuracy: float
    strong_accuracy: float
    prompts: int
    folds: int  # 0: a separate evaluation set
    weak_cost_ratio: float

    def as_dict(self) -> dict[str, object]:
        return {
            "prompts": self.prompts,
            "folds": self.folds,
            "weak_accuracy": round(self.weak_accuracy, 6),
            "strong_accuracy": round(self.strong_accuracy, 6),
            "weak_cost_ratio": self.weak_cost_ratio,
            "routers": [
                {"name": r.name, **r.metrics.as_dict(), "folds": [f.as_dict() for f in r.folds]} for r in self.results
            ],
        }


def _score_rows(
    train: LabelledPrompts,
    test: LabelledPrompts,
    rows: Sequence[RouterRow],
    *,
    weak_cost_ratio: float,
    seed: int,
) -> dict[str, RouterMetrics]:
    weak, strong = test.weak_right, test.strong_right
    found = {
        "random": random_metrics(weak, strong, weak_cost_ratio=weak_cost_ratio, seed=seed),
        "oracle": router_metrics(oracle_scores(weak, strong, seed=seed), weak, strong, weak_cost_ratio=weak_cost_ratio),
    }
    for row in rows:
        scorer = row.fit(train.prompts, train.labels)
        found[row.name] = router_metrics(scorer(test.prompts), weak, strong, weak_cost_ratio=weak_cost_ratio)
    return found


def cross_validate(
    data: LabelledPrompts,
    *,
    rows: Sequence[RouterRow] | None = None,
    folds: int = 5,
    seed: int = 0,
    weak_cost_ratio: float = DEFAULT_WEAK_COST_RATIO,
) -> Evaluation:
    """Stratified k-fold cross-validation: folds keep the mix of (weak right, strong right) pairs, and
    copies of one prompt stay in one fold, so no router is tested on a prompt it was trained on."""
    rows = ROUTER_ROWS if rows is None else rows
    pairs = 2 * data.weak_right.astype(int) + data.strong_right.astype(int)
    groups = np.unique(np.array(data.prompts, dtype=object), return_inverse=True)[1]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    per_fold: dict[str, list[RouterMetrics]] = {}
    for train, test in splitter.split(np.zeros(len(data)), pairs, groups):
        found = _score_rows(data.subset(train), data.subset(test), rows, weak_cost_ratio=weak_cost_ratio, seed=seed)
        for name, metrics in found.items():
            per_fold.setdefault(name, []).append(metrics)
    return Evaluation(
        results=[RouterResult(name, RouterMetrics.mean(m), m) for name, m in per_fold.items()],
        weak_accuracy=float(data.weak_right.mean()),
        strong_accuracy=float(data.strong_right.mean()),
        prompts=len(data),
        folds=folds,
        weak_cost_ratio=weak_cost_ratio,
    )


def train_and_evaluate(
    train: LabelledPrompts,
    test: LabelledPrompts,
    *,
    rows: Sequence[RouterRow] | None = None,
    seed: int = 0,
    weak_cost_ratio: float = DEFAULT_WEAK_COST_RATIO,
) -> Evaluation:
    rows = ROUTER_ROWS if rows is None else rows
    found = _score_rows(train, test, rows, weak_cost_ratio=weak_cost_ratio, seed=seed)
    return Evaluation(
        results=[RouterResult(name, metrics) for name, metrics in found.items()],
        weak_accuracy=float(test.weak_right.mean()),
        strong_accuracy=float(test.strong_right.mean()),
        prompts=len(test),
        folds=0,
        weak_cost_ratio=weak_cost_ratio,
    )


def format_table(evaluation: Evaluation) -> str:
    def percent(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"

    def ratio(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    header = ("router", "APGR", "CPT(50%)", "CPT(80%)", "cost @95%", "strong @95%")
    lines = [
        (
            r.name,
            ratio(r.metrics.apgr),
            percent(r.metrics.cpt50),
            percent(r.metrics.cpt80),
            percent(r.metrics.cost_share_at_95),
            percent(r.metrics.strong_share_at_95),
        )
        for r in evaluation.results
    ]
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]

    def render(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))

    how = f"{evaluation.folds}-fold cross-validation" if evaluation.folds else "held-out evaluation set"
    intro = (
        f"{evaluation.prompts} prompts, {how}; weak model right {100 * evaluation.weak_accuracy:.2f}%, "
        f"strong {100 * evaluation.strong_accuracy:.2f}%; a weak call costs {evaluation.weak_cost_ratio:g} "
        "of a strong one"
    )
    rule = "-" * len(render(header))
    return "\n".join([intro, render(header), rule, *(render(line) for line in lines)])
