"""deploy/compose.yaml, checked offline.

No compose binary runs here: the file is validated against the Compose Specification's JSON schema
(the copy check-jsonschema ships), after the same variable substitution compose does with
deploy/.env.example as its .env, and then against the facts the schema cannot know: that every
file, service, volume and secret it names exists, and how the stack is meant to behave.
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml
from django.core.management import get_commands

from .files import (
    COMPOSE,
    DEPLOY,
    ENV_EXAMPLE,
    NGINX_CONF,
    PROMETHEUS_COMPOSE,
    REPO,
    MissingVariable,
    compose,
    compose_raw,
    env_file,
    nginx_directives,
)

APP_SERVICES = {"migrate", "gateway", "usage-writer", "celery-worker", "celery-beat"}
# Services without a health check, each for a reason given in compose.yaml.
UNPROBED = {"migrate", "usage-writer", "celery-beat"}


def _schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping"
    return {key: str(value) for key, value in environment.items()}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts, duration
    assert "".join(n + u for n, u in parts) == duration
    return sum(float(number) * units[unit] for number, unit in parts)


# --- the schema --------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    assert _schema_errors(compose()) == []


def test_schema_check_catches_a_misspelt_key() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["redis"]["depends_on"] = {"postgres": {"condition": "service_finished"}}
    errors = _schema_errors(broken)
    assert any("intervall" in error for error in errors), errors
    assert any("service_finished" in error for error in errors), errors


def test_every_variable_without_a_default_is_required_and_set_in_the_example() -> None:
    example = env_file(ENV_EXAMPLE)
    text = COMPOSE.read_text()
    for name in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "MUXER_SERVER_NAMES"):
        assert f"${{{name}:?" in text, f"{name} should stop compose when unset"
    compose(example)  # every ${VAR:?} is satisfied
    for name in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "MUXER_SERVER_NAMES"):
        without = {key: value for key, value in example.items() if key != name}
        with pytest.raises(MissingVariable, match=name):
            compose(without)


# --- services, images and commands -------------------------------------------------------------------


def test_app_services_build_the_repo_dockerfile_into_one_image() -> None:
    services = _services()
    assert set(services) >= APP_SERVICES
    images = set()
    for name in APP_SERVICES:
        service = services[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()
        images.add(service["image"])
    assert images == {"modelmuxer:local"}, "one image, built once and shared"


def test_every_other_service_uses_a_pinned_image() -> None:
    for name, service in _services().items():
        if name in APP_SERVICES:
            continue
        assert "build" not in service
        repository, _, tag = service["image"].rpartition(":")
        assert repository, name
        assert tag not in ("", "latest"), f"{name}: pin a tag, not {service['image']!r}"


def test_gateway_runs_the_images_command_and_the_others_real_commands() -> None:
    services = _services()
    assert "command" not in services["gateway"], "the Dockerfile's CMD: python -m muxer_project.serve"
    management = get_commands()
    for name in ("migrate", "usage-writer"):
        command = services[name]["command"]
        assert command[:2] == ["python", "manage.py"]
        assert command[2] in management, f"{name}: no management command {command[2]!r}"
    assert services["migrate"]["command"][2] == "migrate"
    assert services["usage-writer"]["command"][2] == "usage_writer"
    for name, role in (("celery-worker", "worker"), ("celery-beat", "beat")):
        command = services[name]["command"]
        assert command[:4] == ["celery", "-A", "muxer_project", role], command
    import muxer_project

    assert muxer_project.celery_app.main == "muxer"


def test_app_services_read_the_env_file_whose_template_is_in_the_repo() -> None:
    for name in APP_SERVICES:
        env_files = _services()[name]["env_file"]
        assert env_files == [{"path": ".env", "required": True}], name
    # deploy/.env is the operator's copy: never committed, never copied into the image.
    assert (COMPOSE.parent / ".env.example").is_file()
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in gitignore, "a bare .env pattern ignores deploy/.env too"
    assert "**/.env" in (REPO / ".dockerignore").read_text().splitlines()


def test_every_bind_mount_source_exists() -> None:
    volumes = compose()["volumes"]
    checked = 0
    for name, service in _services().items():
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} is missing"
                assert (COMPOSE.parent / source).resolve().is_relative_to(DEPLOY)
                checked += 1
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
            assert target.startswith("/")
    assert checked >= 6


# --- ordering and health -----------------------------------------------------------------------------


def test_depends_on_names_real_services_with_real_conditions() -> None:
    services = _services()
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "test" in services[target].get("healthcheck", {}), f"{name} waits on {target}'s health"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} must be one-shot"


def test_the_migration_runs_before_anything_that_uses_the_database() -> None:
    services = _services()
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in APP_SERVICES - {"migrate"}:
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends_on["postgres"]["condition"] == "service_healthy"
        assert depends_on["redis"]["condition"] == "service_healthy"


def test_long_running_services_have_health_checks() -> None:
    for name, service in _services().items():
        healthcheck = service.get("healthcheck", {})
        if name in UNPROBED:
            # The image's own HEALTHCHECK probes port 8000, where only the gateway listens.
            assert healthcheck == {"disable": True}, name
            continue
        assert healthcheck.get("test"), f"{name} has no health check"
        assert _seconds(healthcheck["timeout"]) < _seconds(healthcheck["interval"])


def test_gateway_health_is_readiness() -> None:
    test = _services()["gateway"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:8000/readyz" in test[3]
    compile(test[3], "healthcheck", "exec")


def test_gateway_stops_after_drain_and_grace() -> None:
    gateway = _services()["gateway"]
    environment = _environment(gateway)
    drain = float(environment["MUXER_SHUTDOWN_DRAIN_SECONDS"])
    grace = float(environment["MUXER_SHUTDOWN_GRACE_SECONDS"])
    assert _seconds(gateway["stop_grace_period"]) > drain + grace


# --- scaling -----------------------------------------------------------------------------------------


def test_gateway_can_be_scaled_and_beat_cannot() -> None:
    services = _services()
    gateway = services["gateway"]
    # A fixed container name or a host port would make `--scale gateway=N` fail.
    assert "container_name" not in gateway
    assert "ports" not in gateway
    assert gateway["expose"] == ["8000"]
    beat = services["celery-beat"]
    assert beat["deploy"]["replicas"] == 1
    assert beat["container_name"], "a fixed name makes `--scale celery-beat=2` fail"
    assert "replicas" not in gateway.get("deploy", {})


def test_nginx_balances_over_the_gateway_service() -> None:
    servers = nginx_directives(NGINX_CONF.read_text(), "server")
    upstream_hosts = [args[0] for args in servers if args and ":" in args[0]]
    assert upstream_hosts == ["gateway:8000"]
    host, port = upstream_hosts[0].split(":")
    assert port in _services()[host]["expose"]
    assert "resolve" in next(args for args in servers if args[0] == "gateway:8000")
    nginx = _services()["nginx"]
    repository, tag = nginx["image"].split(":")
    major, minor = (int(part) for part in tag.split("-")[0].split(".")[:2])
    assert repository == "nginx"
    assert (major, minor) >= (1, 28), "upstream `resolve` needs nginx 1.27.3+"
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]


def test_prometheus_finds_every_gateway_replica_through_dns() -> None:
    services = _services()
    config = yaml.safe_load(PROMETHEUS_COMPOSE.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "modelmuxer"]
    (dns,) = job["dns_sd_configs"]
    assert dns["type"] == "A"
    for name in dns["names"]:
        assert str(dns["port"]) in services[name]["expose"]
    prometheus = services["prometheus"]
    assert f"--config.file=/etc/prometheus/{PROMETHEUS_COMPOSE.name}" in prometheus["command"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    # The token file it presents is the compose secret holding MUXER_METRICS_TOKEN.
    (secret,) = prometheus["secrets"]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert compose()["secrets"][secret] == {"environment": "MUXER_METRICS_TOKEN"}
    assert "MUXER_METRICS_TOKEN" in env_file(ENV_EXAMPLE)
    # ...and the only way in: no network is allowed without it.
    assert _environment(services["gateway"])["MUXER_METRICS_ALLOWED_NETWORKS"] == ""


def test_grafana_mounts_what_the_provisioning_files_expect() -> None:
    grafana = _services()["grafana"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    dashboards = yaml.safe_load((provisioning / "dashboards.yml").read_text())
    datasources = yaml.safe_load((provisioning / "datasources.yml").read_text())
    mounts = dict(mount.split(":")[:2] for mount in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == dashboards["providers"][0]["options"]["path"]
    assert mounts["./grafana/provisioning/dashboards.yml"].startswith("/etc/grafana/provisioning/dashboards/")
    assert mounts["./grafana/provisioning/datasources.yml"].startswith("/etc/grafana/provisioning/datasources/")
    url = datasources["datasources"][0]["url"]
    host, port = url.removeprefix("http://").split(":")
    assert host in _services()
    assert f"{port}:{port}" in _services()[host]["ports"][0]


# --- stores and persistence --------------------------------------------------------------------------


def test_postgres_and_redis_keep_their_data_in_named_volumes() -> None:
    services = _services()
    declared = compose()["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    used = {mount.split(":")[0] for service in services.values() for mount in service.get("volumes", [])}
    assert set(declared) == used & set(declared) == {"postgres-data", "redis-data", "prometheus-data", "grafana-data"}
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_database_and_redis_urls_name_the_compose_services() -> None:
    example = env_file(ENV_EXAMPLE)
    database = re.fullmatch(r"postgres://(\w+):([^@]+)@([\w-]+):5432/(\w+)", example["DATABASE_URL"])
    assert database, example["DATABASE_URL"]
    user, password, host, name = database.groups()
    postgres = _services()["postgres"]
    assert host == "postgres"
    assert host in _services()
    assert user == postgres["environment"]["POSTGRES_USER"]
    assert name == postgres["environment"]["POSTGRES_DB"]
    assert password == example["POSTGRES_PASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"redis://redis:6379/\d+", example["REDIS_URL"])


# --- ports -------------------------------------------------------------------------------------------


def test_only_nginx_is_published_and_the_consoles_stay_on_loopback() -> None:
    published = {name: service["ports"] for name, service in _services().items() if "ports" in service}
    assert set(published) == {"nginx", "prometheus", "grafana"}
    assert published["nginx"] == [f"{env_file(ENV_EXAMPLE)['MUXER_HTTP_PORT']}:80"]
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]
    assert published["grafana"] == ["127.0.0.1:3000:3000"]
    # The default when the variable is unset is the same port.
    assert "${MUXER_HTTP_PORT:-8080}:80" in compose_raw()["services"]["nginx"]["ports"]
