"""The Prometheus alert rules (deploy/prometheus/alerts.yml), their unit tests and the example scrape config."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import PROMETHEUS_DIR, Selector, exposed_metrics, run_promtool, selectors, unknown_references

RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
SEVERITIES = {"critical", "warning"}
DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


ALERT_NAMES = [rule["alert"] for rule in _alerts()]


# --- the rules, read as YAML (always runs) ---------------------------------------------------------


def test_alert_names_are_unique_and_there_are_only_alerts() -> None:
    rules = [rule for group in _load(RULES)["groups"] for rule in group["rules"]]
    assert len(rules) == len(ALERT_NAMES) >= 10
    assert len(set(ALERT_NAMES)) == len(ALERT_NAMES)


@pytest.mark.parametrize("alert", _alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_expr_for_severity_and_annotations(alert: dict[str, Any]) -> None:
    assert alert["alert"].startswith("ModelMuxer")
    assert alert["expr"].strip()
    assert DURATION.match(str(alert["for"])), alert["for"]
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    for key in ("summary", "description", "runbook"):
        assert len(annotations[key].strip()) > 20, key


def test_rules_use_only_metrics_and_labels_the_gateway_exposes() -> None:
    refs = [(rule["alert"], selector) for rule in _alerts() for selector in selectors(rule["expr"])]
    assert len(refs) > len(ALERT_NAMES)
    assert unknown_references(refs, exposed_metrics()) == []


def test_unit_test_series_are_metrics_the_gateway_exposes() -> None:
    # Otherwise a test could prove an alert fires on a series the gateway never produces.
    refs = [
        (case["name"], selector)
        for case in _load(RULE_TESTS)["tests"]
        for series in case["input_series"]
        for selector in selectors(series["series"])
    ]
    assert refs
    assert unknown_references(refs, exposed_metrics()) == []


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(ALERT_NAMES) - firing == set()
    assert set(ALERT_NAMES) - quiet == set()
    assert firing | quiet <= set(ALERT_NAMES)


def test_the_promql_reader_finds_metrics_labels_and_nothing_else() -> None:
    # The reader decides what the tests above check, so it must not miss selectors or invent them.
    expr = """
      sum by (provider) (rate(muxer_provider_errors_total{provider=~"$provider", status!="429"}[$__rate_interval]))
      / on (provider) group_left (model)
      (max without (instance) (up{job="modelmuxer"}) offset 5m > bool 0) and histogram_quantile(0.95,
      sum(rate(muxer_request_duration_seconds_bucket[10m:1m])) by (le)) unless topk(3, muxer_usage_stream_pending)
    """
    assert selectors(expr) == [
        Selector("muxer_provider_errors_total", frozenset({"provider", "status"})),
        Selector("up", frozenset({"job"})),
        Selector("muxer_request_duration_seconds_bucket", frozenset()),
        Selector("muxer_usage_stream_pending", frozenset()),
    ]
    known = exposed_metrics()
    assert unknown_references([("x", Selector("muxer_request_total", frozenset()))], known) == [
        "x: no metric muxer_request_total"
    ]
    assert unknown_references([("x", Selector("muxer_requests_total", frozenset({"provder"})))], known) == [
        "x: muxer_requests_total has no label ['provder']"
    ]


def test_exposed_metrics_come_from_the_registry_the_collector_and_django_prometheus() -> None:
    known = exposed_metrics()
    # A counter gains `_total`, a histogram its buckets; the bucket has `le`, every series the target labels.
    assert known["muxer_requests_total"] == frozenset(
        {"endpoint", "org", "model", "provider", "strategy", "status", "job", "instance"}
    )
    assert "muxer_requests" not in known
    assert known["muxer_request_duration_seconds_bucket"] == frozenset({"endpoint", "le", "job", "instance"})
    assert known["muxer_circuit_state"] == frozenset({"provider", "model", "job", "instance"})
    assert "django_db_query_duration_seconds_bucket" in known
    assert "django_http_responses_total_by_status_total" in known


# --- the scrape config, read as YAML (always runs) ---------------------------------------------------


def test_scrape_config_scrapes_the_gateway_with_a_token_file() -> None:
    config = _load(CONFIG)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "modelmuxer"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"].startswith("/")
    assert "credentials" not in job["authorization"]
    assert "bearer_token" not in job
    # Relative to the config file, so the rules load wherever the directory is mounted.
    assert [(CONFIG.parent / path).resolve() for path in config["rule_files"]] == [RULES.resolve()]


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _rules_that_never_fire() -> str:
    """alerts.yml with every alert's expression replaced by one that never fires."""
    rules = _load(RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = "vector(0) > 1"
    return yaml.safe_dump(rules, sort_keys=False)


def test_promtool_unit_tests_fail_for_each_alert_that_never_fires(promtool: str, tmp_path: Path) -> None:
    # The unit tests must be able to fail: every rule that cannot fire has to break one of them.
    (tmp_path / RULES.name).write_text(_rules_that_never_fire())
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run_promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = set(re.findall(r"alertname: (\w+), time:", result.stdout + result.stderr))
    assert failed == set(ALERT_NAMES)


def test_promtool_accepts_the_scrape_config(promtool: str, tmp_path: Path) -> None:
    syntax = run_promtool(promtool, "check", "config", "--syntax-only", CONFIG)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    # The full check also loads the rule files and needs the token file to exist: check a copy, laid
    # out like deploy/prometheus/, whose token file is a temporary one.
    config = _load(CONFIG)
    token = tmp_path / "metrics_token"
    token.write_text("not-a-real-token\n")
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(token)
    (tmp_path / CONFIG.name).write_text(yaml.safe_dump(config, sort_keys=False))
    for path in config["rule_files"]:
        shutil.copy(CONFIG.parent / path, tmp_path / path)
    result = run_promtool(promtool, "check", "config", CONFIG.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(config['rule_files'])} rule files found" in result.stdout
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout
