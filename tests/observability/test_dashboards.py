"""The Grafana dashboards (deploy/grafana/dashboards/) and their provisioning files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import (
    GRAFANA_DIR,
    Selector,
    exposed_metrics,
    run_promtool,
    selectors,
    unknown_references,
    variable_query_selectors,
)

DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's own variables, resolved per panel and query.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"{panel['title']} {target['refId']}", target


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, list[Selector]]]:
    """Every PromQL a dashboard runs: panel targets and variable queries."""
    for where, target in _targets(dashboard):
        yield where, selectors(target["expr"])
    for name, variable in _variables(dashboard).items():
        if variable["type"] == "query":
            yield f"${name}", variable_query_selectors(_variable_query(variable))


@pytest.fixture(params=DASHBOARDS, ids=lambda path: path.stem)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _load(request.param)


def test_the_four_dashboards_exist_with_their_own_uid_and_title() -> None:
    assert [path.stem for path in DASHBOARDS] == ["cost", "operations", "providers", "security"]
    loaded = [_load(path) for path in DASHBOARDS]
    assert sorted(d["uid"] for d in loaded) == [f"modelmuxer-{path.stem}" for path in DASHBOARDS]
    assert len({d["title"] for d in loaded}) == len(loaded)


def test_dashboard_header(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["tags"] == ["modelmuxer"]
    assert dashboard["title"].startswith("ModelMuxer / ")
    # Provisioned dashboards carry no database id; Grafana assigns one.
    assert dashboard["id"] is None


def test_datasource_is_a_prometheus_variable(dashboard: dict[str, Any]) -> None:
    variable = _variables(dashboard)["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"


def test_panel_ids_are_unique_and_panels_fit_the_grid(dashboard: dict[str, Any]) -> None:
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) > 5
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["w"] > 0, panel["title"]


def test_every_panel_and_target_queries_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    panels = [panel for panel in _panels(dashboard) if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in _variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, variable["name"]


def test_every_query_uses_metrics_and_labels_the_gateway_exposes(dashboard: dict[str, Any]) -> None:
    refs = [(where, selector) for where, found in _queries(dashboard) for selector in found]
    assert refs
    assert unknown_references(refs, exposed_metrics()) == []


def test_every_variable_used_is_defined(dashboard: dict[str, Any]) -> None:
    defined = set(_variables(dashboard)) | set(BUILTIN_VARIABLES)
    used = {
        name
        for _where, target in _targets(dashboard)
        for groups in VARIABLE.findall(target["expr"])
        for name in groups
        if name
    }
    assert used
    assert used - defined == set()


def test_label_variables_filter_every_query_that_has_the_label(dashboard: dict[str, Any]) -> None:
    # Choosing an organization (or provider, endpoint) must narrow every panel it can, not just some.
    known = exposed_metrics()
    filters = {}
    for name, variable in _variables(dashboard).items():
        if variable["type"] == "query":
            (selector,) = variable_query_selectors(_variable_query(variable))
            label = re.findall(r",\s*(\w+)\s*\)\s*$", _variable_query(variable))[0]
            filters[label] = name
            assert label in selector.labels
    missing = []
    for where, target in _targets(dashboard):
        for label, name in filters.items():
            for selector in selectors(target["expr"]):
                if label in (known.get(selector.metric) or ()) and f'{label}=~"${name}"' not in target["expr"]:
                    missing.append(f"{where}: {selector.metric} not filtered by ${name}")
    assert missing == []


# --- provisioning --------------------------------------------------------------------------------


def test_datasource_provisioning_points_at_prometheus() -> None:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources.yml").read_text())
    (source,) = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["access"] == "proxy"


def test_dashboard_provisioning_is_a_file_provider() -> None:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards.yml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


# --- promtool ------------------------------------------------------------------------------------


def _as_plain_promql(expr: str) -> str:
    """The expression as Prometheus would get it: Grafana's variables replaced by sample values."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return BUILTIN_VARIABLES.get(name, ".*")

    return VARIABLE.sub(value, expr)


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:{path.stem}:{index}", "expr": _as_plain_promql(target["expr"])}
        for path in DASHBOARDS
        for index, (_where, target) in enumerate(_targets(_load(path)))
    ]
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", tmp_path / "dashboards.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
