"""What the alert rules and dashboards ask Prometheus for, and what the gateway can answer.

:func:`selectors` reads the metric names and label matchers out of a PromQL
expression (enough of PromQL for our rules and panels, not a full parser).
:func:`exposed_metrics` derives every sample name the gateway can expose, with
its label names, from the metric definitions themselves: the collectors in
prometheus_client's registry once ``muxer_project.metrics`` is imported, the
scrape-time families ``muxer_project.metrics`` builds, and django-prometheus's
metrics (read from its source, since they register only once its app and
backends are in use).
"""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# `up` is Prometheus's own, one per target.
SCRAPE_HEALTH = {"up": TARGET_LABELS}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@:])
    """,
    re.VERBOSE,
)
_AGGREGATORS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
# Keywords followed by a parenthesised list of label names, not of expressions.
_GROUPING = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
_KEYWORDS = frozenset(["and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"])


@dataclass(frozen=True, order=True)
class Selector:
    """One vector selector: the metric and the label names its matchers use."""

    metric: str
    labels: frozenset[str]


def _tokens(expr: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position : position + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in {"space", "comment"}:
            found.append((kind, match.group()))
        position = match.end()
    return found


def _matchers(tokens: list[tuple[str, str]], at: int) -> tuple[frozenset[str], int]:
    """The label names in a ``{...}`` starting at ``at`` (if there is one), and the index after it."""
    if at >= len(tokens) or tokens[at][1] != "{":
        return frozenset(), at
    names: set[str] = set()
    at += 1
    while at < len(tokens) and tokens[at][1] != "}":
        if tokens[at][0] == "ident":
            names.add(tokens[at][1])
        at += 1
    return frozenset(names), at + 1


def _skip_parens(tokens: list[tuple[str, str]], at: int) -> int:
    depth = 0
    while at < len(tokens):
        depth += {"(": 1, ")": -1}.get(tokens[at][1], 0)
        at += 1
        if depth == 0:
            break
    return at


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in ``expr``, in order. Grafana variables (``$org``) may appear anywhere."""
    tokens = _tokens(expr)
    found: list[Selector] = []
    at = 0
    while at < len(tokens):
        kind, text = tokens[at]
        following = tokens[at + 1][1] if at + 1 < len(tokens) else None
        if kind == "ident":
            word = text.lower()
            if word in _GROUPING:
                at = _skip_parens(tokens, at + 1) if following == "(" else at + 1
                continue
            if following == "(" or word in _KEYWORDS or (word in _AGGREGATORS and following in _GROUPING):
                at += 1
                continue
            labels, at = _matchers(tokens, at + 1)
            found.append(Selector(text, labels))
            continue
        if text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}: name the metric")
        at += 1
    return found


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$")
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)


def variable_query_selectors(query: str) -> list[Selector]:
    """Selectors of a Grafana Prometheus variable query (``label_values(metric, label)``, ``query_result(...)``)."""
    if match := _LABEL_VALUES.match(query):
        if not match["selector"]:
            raise ValueError(f"label_values without a metric scans every series: {query!r}")
        found = selectors(match["selector"])
        assert len(found) == 1, query
        return [Selector(found[0].metric, found[0].labels | {match["label"]})]
    if match := _QUERY_RESULT.match(query):
        return selectors(match["expr"])
    raise ValueError(f"unexpected variable query {query!r}")


# --- what the gateway exposes ---------------------------------------------------------------------

_CLASS_KINDS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
    "InfoMetricFamily": "info",
}


@dataclass(frozen=True)
class Declared:
    name: str  # as exposed before the type's suffixes (a counter's without `_total`)
    kind: str
    labels: frozenset[str]
    scrape_time: bool  # a *MetricFamily built by a custom collector, not a registered metric


def _base_name(name: str, kind: str) -> str:
    # prometheus_client drops a counter's `_total` and adds it back on the sample.
    return name.removesuffix("_total") if kind == "counter" else name


def _literal_strings(node: ast.expr | None) -> frozenset[str]:
    if isinstance(node, ast.List | ast.Tuple):
        return frozenset(e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return frozenset()


def _callee(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def declared_in_source(path: Path) -> Iterator[Declared]:
    """Metrics a module defines with a literal name: ``Counter("x", "doc", [labels])``, a ``*MetricFamily``,
    or django-prometheus's ``register_metric(Counter, "x", "doc", [labels])``."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        callee, args = _callee(node.func), list(node.args)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if callee == "register_metric" and args:
            callee, args = _callee(args[0]), args[1:]
        kind = _CLASS_KINDS.get(callee)
        if kind is None or not args or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
            continue
        labels_node = args[2] if len(args) > 2 else keywords.get("labelnames", keywords.get("labels"))
        yield Declared(
            name=_base_name(args[0].value, kind),
            kind=kind,
            labels=_literal_strings(labels_node),
            scrape_time=callee.endswith("MetricFamily"),
        )


def sample_names(name: str, kind: str, labels: frozenset[str]) -> dict[str, frozenset[str]]:
    """The series names (and their labels) one metric family exposes."""
    labels = labels | TARGET_LABELS
    if kind == "counter":
        return {f"{name}_total": labels, f"{name}_created": labels}
    if kind == "histogram":
        return {
            f"{name}_bucket": labels | {"le"},
            f"{name}_sum": labels,
            f"{name}_count": labels,
            f"{name}_created": labels,
        }
    if kind == "summary":
        return {name: labels | {"quantile"}, f"{name}_sum": labels, f"{name}_count": labels, f"{name}_created": labels}
    if kind == "info":
        return {f"{name}_info": labels}
    return {name: labels}


def _django_prometheus_sources() -> list[Path]:
    package = Path(importlib.import_module("django_prometheus").__file__ or "").parent
    return [p for p in sorted(package.rglob("*.py")) if "tests" not in p.relative_to(package).parts]


def exposed_metrics() -> dict[str, frozenset[str] | None]:
    """Every series name the gateway's /metrics can expose, with its label names (None: not known).

    The registry says what is registered; the definitions' source gives the label names, which a
    registered metric with no samples yet does not reveal.
    """
    from prometheus_client import REGISTRY

    gateway = importlib.import_module("muxer_project.metrics")
    gateway_declared = list(declared_in_source(Path(gateway.__file__ or "")))
    django_declared = [d for path in _django_prometheus_sources() for d in declared_in_source(path)]
    labels_of = {(d.name, d.kind): d.labels for d in [*gateway_declared, *django_declared]}

    found: dict[str, frozenset[str] | None] = dict(SCRAPE_HEALTH)
    for family in REGISTRY.collect():
        labels = labels_of.get((family.name, family.type))
        for sample, with_target in sample_names(family.name, family.type, labels or frozenset()).items():
            found[sample] = with_target if labels is not None else None
    # Scrape-time families come from a collector registered per scrape, and django-prometheus's
    # metrics register when its middleware and backends load: both are taken from their source.
    for declared in [*(d for d in gateway_declared if d.scrape_time), *django_declared]:
        found.update(sample_names(declared.name, declared.kind, declared.labels))
    return found


def unknown_references(refs: list[tuple[str, Selector]], known: dict[str, frozenset[str] | None]) -> list[str]:
    """Problems with ``(where, selector)`` references: metrics that do not exist, labels they do not have."""
    problems = []
    for where, selector in refs:
        if selector.metric not in known:
            problems.append(f"{where}: no metric {selector.metric}")
            continue
        labels = known[selector.metric]
        if labels is not None and not selector.labels <= labels:
            problems.append(f"{where}: {selector.metric} has no label {sorted(selector.labels - labels)}")
    return problems


# --- promtool -------------------------------------------------------------------------------------


def promtool_path() -> str | None:
    return shutil.which("promtool")


def run_promtool(promtool: str, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60, check=False)
