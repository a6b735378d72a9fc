from __future__ import annotations

import json
import math
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from routing.evaluation import (
    DEFAULT_WEAK_COST_RATIO,
    ROUTER_ROWS,
    LabelledDataError,
    RouterMetrics,
    load_labelled_prompts,
    oracle_scores,
    random_metrics,
    router_metrics,
    share_reaching,
    threshold_points,
)

from .router_data import labelled_rows, write_contamination, write_csv

# Four prompts: the weak model gets the first two right, the strong model all four.
WEAK = np.array([True, True, False, False])
STRONG = np.array([True, True, True, True])
SCORES = np.array([0.1, 0.2, 0.3, 0.4])


# --- metrics ------------------------------------------------------------------------------------------


def test_threshold_points_use_quantile_edges_and_a_strict_last_edge() -> None:
    points = threshold_points(SCORES, WEAK, STRONG, bins=2)
    # Edges 0.1, 0.25 and 0.4: all four strong, the top two, none (0.4 is strict).
    assert points.tolist() == [[0.0, 0.5], [0.5, 1.0], [1.0, 1.0]]


def test_router_metrics_by_hand() -> None:
    # Ten bins over four scores give shares 0, 1/4 (x3), 1/2 (x3), 3/4 (x3), 1 with accuracies
    # 0.5, 0.75, 1, 1, 1: the area is 0.15625 + 0.21875 + 0.5 = 0.875, and PGR's area (0.875 - 0.5) / 0.5.
    metrics = router_metrics(SCORES, WEAK, STRONG, weak_cost_ratio=0.1)
    assert metrics.apgr == pytest.approx(0.75)
    assert metrics.cpt50 == pytest.approx(0.25)  # accuracy 0.75 first reached at a quarter
    assert metrics.cpt80 == pytest.approx(0.4)  # 0.9: 0.25 + 0.15 / 0.25 * 0.25
    assert metrics.strong_share_at_95 == pytest.approx(0.45)  # 0.95: 0.25 + 0.2 / 0.25 * 0.25
    assert metrics.cost_share_at_95 == pytest.approx(0.1 * 0.55 + 0.45)


def test_a_constant_score_is_as_good_as_random() -> None:
    metrics = router_metrics(np.full(4, 0.3), WEAK, STRONG)
    assert metrics.apgr == pytest.approx(0.5)
    assert metrics.cpt50 == pytest.approx(0.5)
    assert metrics.cpt80 == pytest.approx(0.8)


def test_random_routing_averages_to_half_the_gap() -> None:
    rng = np.random.default_rng(1)
    weak = rng.random(2000) < 0.6
    strong = weak | (rng.random(2000) < 0.5)
    metrics = random_metrics(weak, strong, weak_cost_ratio=DEFAULT_WEAK_COST_RATIO)
    assert metrics.apgr == pytest.approx(0.5, abs=0.02)
    assert metrics.cpt50 == pytest.approx(0.5, abs=0.05)


def test_a_scorer_that_knows_where_the_strong_model_is_needed_nears_the_oracle() -> None:
    rng = np.random.default_rng(2)
    weak = rng.random(1000) < 0.6
    strong = rng.random(1000) < 0.8
    need = (~weak & strong).astype(float)
    perfect = router_metrics(need + 0.01 * rng.random(1000), weak, strong)
    oracle = router_metrics(oracle_scores(weak, strong), weak, strong)
    # Both beat the strong model alone, which gets some prompts wrong that the weak model answers; only the
    # oracle also keeps those prompts on the weak model.
    assert oracle.apgr >= perfect.apgr > 1.1
    assert perfect.cpt50 == pytest.approx(oracle.cpt50, abs=0.02)
    assert oracle.cpt80 < need.mean()


def test_share_reaching_is_nan_when_never_reached() -> None:
    points = np.array([[0.0, 0.5], [1.0, 0.8]])
    assert math.isnan(share_reaching(points, 0.9))
    assert share_reaching(points, 0.4) == 0.0


def test_the_mean_of_metrics_is_nan_where_any_fold_is() -> None:
    one = RouterMetrics(0.6, 0.3, 0.6, 0.5, 0.4)
    two = RouterMetrics(0.7, 0.4, math.nan, 0.6, 0.5)
    mean = RouterMetrics.mean([one, two])
    assert mean.apgr == pytest.approx(0.65)
    assert math.isnan(mean.cpt80)


# --- loading --------------------------------------------------------------------------------------------


def test_it_loads_routellm_columns_and_ignores_extra_ones(tmp_path: Path) -> None:
    rows = labelled_rows(5)
    data = load_labelled_prompts(write_csv(tmp_path / "a.csv", rows))
    assert data.prompts == [r[0] for r in rows]
    assert data.weak_right.tolist() == [r[1] for r in rows]
    assert data.strong_right.tolist() == [r[2] for r in rows]
    assert data.labels.shape == (15, 2)


def test_it_loads_named_columns_and_ones_and_zeros(tmp_path: Path) -> None:
    rows = labelled_rows(3)
    path = write_csv(tmp_path / "mine.csv", rows, columns=("question", "cheap_ok", "big_ok"), truth=("1", "0"))
    data = load_labelled_prompts(path, prompt_column="question", weak_column="cheap_ok", strong_column="big_ok")
    assert data.weak_right.tolist() == [r[1] for r in rows]


def test_a_folder_is_read_recursively_and_contamination_one_level_up_is_honoured(tmp_path: Path) -> None:
    rows = labelled_rows(4)
    write_csv(tmp_path / "bench" / "responses" / "one.csv", rows[:6])
    write_csv(tmp_path / "bench" / "responses" / "two.csv", rows[6:])
    write_contamination(tmp_path / "bench", [rows[0][0], rows[7][0], "a prompt not in the data"])
    data = load_labelled_prompts(tmp_path / "bench")
    assert len(data) == len(rows) - 2
    assert rows[0][0] not in data.prompts
    assert rows[7][0] not in data.prompts
    assert data.contaminated_dropped == 2
    assert [f.name for f in data.files] == ["one.csv", "two.csv"]


def test_contamination_beside_a_single_file_is_honoured(tmp_path: Path) -> None:
    rows = labelled_rows(2)
    path = write_csv(tmp_path / "a.csv", rows)
    write_contamination(tmp_path, [rows[3][0]])
    assert len(load_labelled_prompts(path)) == len(rows) - 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weak_column": "nope"}, "no column 'nope'"),
        ({"prompt_column": "text"}, "no prompt column 'text'"),
    ],
)
def test_a_missing_column_is_named(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    path = write_csv(tmp_path / "a.csv", labelled_rows(2))
    with pytest.raises(LabelledDataError, match=message):
        load_labelled_prompts(path, **kwargs)


def test_unknown_default_columns_ask_for_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", labelled_rows(2), columns=("prompt", "a", "b"))
    with pytest.raises(LabelledDataError, match="none of the default weak-model columns"):
        load_labelled_prompts(path)


def test_a_value_that_is_not_a_boolean_is_pointed_at(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("prompt,weak_right,strong_right\nfine,True,True\nodd,maybe,True\n")
    with pytest.raises(LabelledDataError, match=r"a.csv:3: column 'weak_right' is 'maybe'"):
        load_labelled_prompts(path)


def test_a_missing_path_or_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LabelledDataError, match="does not exist"):
        load_labelled_prompts(tmp_path / "missing")
    with pytest.raises(LabelledDataError, match=r"holds no \.csv files"):
        load_labelled_prompts(tmp_path)


# --- the command ----------------------------------------------------------------------------------------


def _run(*args: str) -> str:
    out = StringIO()
    call_command("evaluate_router", *args, stdout=out)
    return out.getvalue()


def test_the_registry_has_the_semantic_heuristic_and_hybrid_rows() -> None:
    assert [row.name for row in ROUTER_ROWS][:3] == ["semantic", "heuristic", "hybrid"]


@pytest.mark.django_db
def test_evaluate_router_cross_validates_and_prints_a_row_per_router(tmp_path: Path) -> None:
    write_csv(tmp_path / "data" / "a.csv", labelled_rows(40))
    output = _run("--train", str(tmp_path / "data"))
    lines = output.splitlines()
    assert lines[0].startswith("120 prompts, 5-fold cross-validation;")
    assert lines[1].split() == ["router", "APGR", "CPT(50%)", "CPT(80%)", "cost", "@95%", "strong", "@95%"]
    names = [line.split()[0] for line in lines[3:]]
    assert names == ["random", "oracle", "semantic", "heuristic", "hybrid"]
    apgr = {line.split()[0]: float(line.split()[1]) for line in lines[3:]}
    assert apgr["random"] == pytest.approx(0.5, abs=0.05)
    assert apgr["oracle"] > apgr["semantic"] > 0.75


@pytest.mark.django_db
def test_evaluate_router_trains_on_one_set_and_scores_another_as_json(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", labelled_rows(40, seed=1))
    test = write_csv(tmp_path / "test" / "test.csv", labelled_rows(20, seed=2))
    result = json.loads(_run("--train", str(train), "--eval", str(test), "--router", "semantic", "--json"))
    assert result["folds"] == 0
    assert result["prompts"] == 60
    assert [r["name"] for r in result["routers"]] == ["random", "oracle", "semantic"]
    semantic = result["routers"][2]
    assert semantic["apgr"] > 0.9
    assert 0 < semantic["cpt50"] < 0.5
    assert semantic["cost_share_at_95"] == pytest.approx(
        DEFAULT_WEAK_COST_RATIO * (1 - semantic["strong_share_at_95"]) + semantic["strong_share_at_95"], abs=1e-5
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "/nonexistent/labels"], "does not exist"),
        (["--weak-column", "nope"], "no column 'nope'"),
        (["--router", "psychic"], "Unknown router psychic"),
        (["--folds", "1"], "--folds must be at least 2"),
    ],
)
def test_evaluate_router_explains_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    path = write_csv(tmp_path / "a.csv", labelled_rows(10))
    if "--train" not in args:
        args = ["--train", str(path), *args]
    with pytest.raises(CommandError, match=message):
        _run(*args)
