"""deploy/prometheus/prometheus.compose.yml: the example config's job, with the replicas found by DNS."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.observability.promql import run_promtool

from .files import PROMETHEUS_COMPOSE

EXAMPLE = PROMETHEUS_COMPOSE.parent / "prometheus.yml"


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def _job(config: dict[str, Any]) -> dict[str, Any]:
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "modelmuxer"]
    return dict(job)


def test_same_rules_and_job_as_the_example_but_discovered_by_dns() -> None:
    compose_config, example = _load(PROMETHEUS_COMPOSE), _load(EXAMPLE)
    assert compose_config["global"] == example["global"]
    assert compose_config["rule_files"] == example["rule_files"]
    job, example_job = _job(compose_config), _job(example)
    assert "static_configs" not in job
    assert {key: value for key, value in job.items() if key != "dns_sd_configs"} == {
        key: value for key, value in example_job.items() if key != "static_configs"
    }
    (dns,) = job["dns_sd_configs"]
    assert dns == {"names": ["gateway"], "type": "A", "port": 8000, "refresh_interval": "15s"}


def test_promtool_accepts_the_config_and_its_rules(promtool: str, tmp_path: Path) -> None:
    syntax = run_promtool(promtool, "check", "config", "--syntax-only", PROMETHEUS_COMPOSE)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    # The full check loads the rule files and the token file: a copy laid out like deploy/prometheus/,
    # whose token file is a temporary one.
    config = _load(PROMETHEUS_COMPOSE)
    token = tmp_path / "metrics_token"
    token.write_text("not-a-real-token\n")
    _job(config)  # present
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    (tmp_path / PROMETHEUS_COMPOSE.name).write_text(yaml.safe_dump(config, sort_keys=False))
    for path in config["rule_files"]:
        shutil.copy(PROMETHEUS_COMPOSE.parent / path, tmp_path / path)
    result = run_promtool(promtool, "check", "config", PROMETHEUS_COMPOSE.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(config['rule_files'])} rule files found" in result.stdout


def test_promtool_rejects_a_bad_discovery_type(promtool: str, tmp_path: Path) -> None:
    config = _load(PROMETHEUS_COMPOSE)
    _job(config)["dns_sd_configs"][0]["type"] = "AAAAA"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_promtool(promtool, "check", "config", "--syntax-only", broken)
    assert result.returncode != 0
