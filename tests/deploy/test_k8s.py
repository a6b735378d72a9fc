"""deploy/k8s/, checked offline.

Built-in kinds are validated by kubernetes-validate against the Kubernetes OpenAPI schemas it
ships (strict: an unknown field fails). The ServiceMonitor is a CRD those schemas lack, and the
kustomization is not an object, so both are read as YAML. Then the facts no schema knows: that
selectors, names and references line up, and how the gateway stops and scales.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from django.conf import settings

from .files import K8S, k8s_documents

# The oldest Kubernetes these manifests aim at, and the newest schema the validator ships.
KUBERNETES_VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
COMPONENT = "app.kubernetes.io/component"


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for _, document in k8s_documents():
        key = (document["kind"], document["metadata"]["name"])
        assert key not in objects, f"two {key}"
        objects[key] = document
    return objects


def _get(kind: str, name: str) -> dict[str, Any]:
    return _objects()[(kind, name)]


def _deployments() -> dict[str, dict[str, Any]]:
    return {name: document for (kind, name), document in _objects().items() if kind == "Deployment"}


def _pod_specs() -> dict[str, dict[str, Any]]:
    specs = {name: document["spec"]["template"]["spec"] for name, document in _deployments().items()}
    specs["job/modelmuxer-migrate"] = _get("Job", "modelmuxer-migrate")["spec"]["template"]["spec"]
    return specs


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _validate(document: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(document, version, strict=True)


# --- schemas -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_match_the_kubernetes_schemas(version: str) -> None:
    validated = []
    for path, document in k8s_documents():
        if (document["apiVersion"], document["kind"]) in CUSTOM_KINDS:
            continue
        try:
            _validate(document, version)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name} {document['kind']}/{document['metadata']['name']}: {error}")
        validated.append(document["kind"])
    kinds = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}
    assert kinds | {"HorizontalPodAutoscaler", "Job", "Ingress"} <= set(validated)
    assert validated.count("Deployment") == 4


def test_validation_catches_an_unknown_field_and_a_wrong_type() -> None:
    deployment = copy.deepcopy(_get("Deployment", "modelmuxer-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessProbes"):
        _validate(deployment, KUBERNETES_VERSIONS[-1])
    hpa = copy.deepcopy(_get("HorizontalPodAutoscaler", "modelmuxer-gateway"))
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="two"):
        _validate(hpa, KUBERNETES_VERSIONS[-1])


def test_the_only_kind_without_a_schema_is_the_service_monitor() -> None:
    for _, document in k8s_documents():
        if (document["apiVersion"], document["kind"]) in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                _validate(document, KUBERNETES_VERSIONS[-1])


# --- the kustomization -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_sets_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    files = sorted(path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    assert sorted(listed) == files
    assert listed.index("namespace.yaml") == 0
    images = {image["name"] for image in kustomization["images"]}
    used = {
        container["image"].split(":")[0]
        for spec in _pod_specs().values()
        for container in spec["containers"] + spec.get("initContainers", [])
    }
    assert used == images == {"modelmuxer"}
    namespace = _get("Namespace", kustomization["namespace"])
    assert namespace["metadata"]["name"] == "modelmuxer"


# --- references --------------------------------------------------------------------------------------


def test_selectors_match_their_pods() -> None:
    for name, deployment in _deployments().items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _matches(selector, deployment["spec"]["template"]["metadata"]["labels"]), name
        # Each selects its own component only.
        others = [d for n, d in _deployments().items() if n != name]
        assert not any(_matches(selector, d["spec"]["template"]["metadata"]["labels"]) for d in others), name
    gateway_labels = _get("Deployment", "modelmuxer-gateway")["spec"]["template"]["metadata"]["labels"]
    assert _matches(_get("Service", "modelmuxer-gateway")["spec"]["selector"], gateway_labels)
    pdb = _get("PodDisruptionBudget", "modelmuxer-gateway")["spec"]
    assert _matches(pdb["selector"]["matchLabels"], gateway_labels)
    target = _get("HorizontalPodAutoscaler", "modelmuxer-gateway")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "modelmuxer-gateway")


def test_every_config_map_and_secret_referenced_exists() -> None:
    config = _get("ConfigMap", "modelmuxer-config")
    secret = _get("Secret", "modelmuxer-secrets")
    for name, spec in _pod_specs().items():
        for container in spec["containers"] + spec.get("initContainers", []):
            sources = container["envFrom"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources, name
            assert {"secretRef": {"name": secret["metadata"]["name"]}} in sources, name
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        for container in spec["containers"] + spec.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: volume {mount['name']}"


def test_secret_template_holds_placeholders_only() -> None:
    secret = _get("Secret", "modelmuxer-secrets")
    data = secret["stringData"]
    assert "data" not in secret
    for key in ("SECRET_KEY", "MUXER_API_KEY_SECRET", "MUXER_FERNET_KEYS", "MUXER_METRICS_TOKEN"):
        assert data[key] == "change-me", key
    assert ":change-me@" in data["DATABASE_URL"]
    config = _get("ConfigMap", "modelmuxer-config")["data"]
    assert not set(config) & set(data), "a variable in both would be ambiguous"


def test_the_ingress_routes_to_the_gateway_service() -> None:
    ingress = _get("Ingress", "modelmuxer-gateway")
    service = _get("Service", "modelmuxer-gateway")
    annotations = ingress["metadata"]["annotations"]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{settings.MUXER_MAX_BODY_BYTES // 2**20}m"
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"] == "error timeout"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > float(
        settings.MUXER_UPSTREAM_TIMEOUT_SECONDS
    )


# --- the gateway -------------------------------------------------------------------------------------


def _gateway_container() -> dict[str, Any]:
    spec = _get("Deployment", "modelmuxer-gateway")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return dict(container)


def test_gateway_runs_the_images_command_with_probes_on_health_endpoints() -> None:
    container = _gateway_container()
    # The Dockerfile's CMD: python -m muxer_project.serve.
    assert "command" not in container
    assert "args" not in container
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    readiness = container["readinessProbe"]
    assert readiness["timeoutSeconds"] > settings.MUXER_READY_TIMEOUT_SECONDS


def test_gateway_outlives_drain_and_grace_after_sigterm() -> None:
    spec = _get("Deployment", "modelmuxer-gateway")["spec"]["template"]["spec"]
    config = _get("ConfigMap", "modelmuxer-config")["data"]
    drain = float(config["MUXER_SHUTDOWN_DRAIN_SECONDS"])
    grace = float(config["MUXER_SHUTDOWN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > drain + grace
    # The server drains by itself, so there is no preStop hook to add to the period.
    assert "lifecycle" not in _gateway_container()


def test_gateway_workers_match_its_cpu_request() -> None:
    container = _gateway_container()
    config = _get("ConfigMap", "modelmuxer-config")["data"]
    assert int(config["WEB_CONCURRENCY"]) == int(container["resources"]["requests"]["cpu"])
    assert "cpu" not in container["resources"].get("limits", {})
    assert float(config["MUXER_KEEP_ALIVE_SECONDS"]) > 60, "longer than the ingress controller's idle timeout"


def test_gateway_scales_on_cpu_and_keeps_one_up_through_disruptions() -> None:
    hpa = _get("HorizontalPodAutoscaler", "modelmuxer-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in _get("Deployment", "modelmuxer-gateway")["spec"], "the HPA owns the count"
    pdb = _get("PodDisruptionBudget", "modelmuxer-gateway")["spec"]
    assert pdb["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_gateway_pods_wait_for_the_migration() -> None:
    spec = _get("Deployment", "modelmuxer-gateway")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert "python manage.py migrate --check" in init["command"][-1]
    job = _get("Job", "modelmuxer-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1].endswith("exec python manage.py migrate --noinput")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# --- the other processes -----------------------------------------------------------------------------


def test_beat_is_one_pod_never_two() -> None:
    beat = _get("Deployment", "modelmuxer-celery-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    targets = [
        hpa["spec"]["scaleTargetRef"]["name"]
        for (kind, _), hpa in _objects().items()
        if kind == "HorizontalPodAutoscaler"
    ]
    assert beat["metadata"]["name"] not in targets
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    assert "celery -A muxer_project beat" in container["command"][-1]


def test_worker_and_usage_writer_run_their_commands() -> None:
    commands = {
        name: document["spec"]["template"]["spec"]["containers"][0].get("command", [""])[-1]
        for name, document in _deployments().items()
    }
    assert "exec celery -A muxer_project worker" in commands["modelmuxer-celery-worker"]
    assert commands["modelmuxer-usage-writer"].endswith("exec python manage.py usage_writer")


def test_every_container_has_resources_and_runs_unprivileged() -> None:
    for name, spec in _pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container["resources"]
            assert resources["requests"]["cpu"], name
            assert resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            # The image's PROMETHEUS_MULTIPROC_DIR is under /tmp, an empty volume here.
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name
            if "command" in container:
                assert container["command"][-1].startswith('mkdir -p "$PROMETHEUS_MULTIPROC_DIR" && '), name


# --- the ServiceMonitor (a CRD: read as YAML) --------------------------------------------------------


def test_service_monitor_scrapes_the_gateway_with_the_token() -> None:
    monitor = _get("ServiceMonitor", "modelmuxer-gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _get("Service", "modelmuxer-gateway")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    secret = _get("Secret", credentials["name"])
    assert credentials["key"] in secret["stringData"]
    assert credentials["key"] == "MUXER_METRICS_TOKEN"
    # Only the token opens /metrics: no network is allowed without it.
    assert _get("ConfigMap", "modelmuxer-config")["data"]["MUXER_METRICS_ALLOWED_NETWORKS"] == ""


def test_service_monitor_labels_the_job_the_alert_rules_select() -> None:
    (endpoint,) = _get("ServiceMonitor", "modelmuxer-gateway")["spec"]["endpoints"]
    relabel = [rule for rule in endpoint["relabelings"] if rule.get("targetLabel") == "job"]
    assert relabel == [{"action": "replace", "targetLabel": "job", "replacement": "modelmuxer"}]
    rules = Path(K8S.parent / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="modelmuxer"}' in rules


def test_service_monitor_uses_only_fields_of_its_crd() -> None:
    # The fields of monitoring.coreos.com/v1 ServiceMonitor and its Endpoint used here (prometheus-operator's
    # API reference); a misspelt one would be dropped silently by a permissive apply.
    spec_fields = {"selector", "endpoints", "jobLabel", "namespaceSelector", "targetLabels", "podTargetLabels"}
    endpoint_fields = {
        "port",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "authorization",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
        "tlsConfig",
    }
    monitor = _get("ServiceMonitor", "modelmuxer-gateway")
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= spec_fields
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= endpoint_fields
        assert set(endpoint["authorization"]) == {"type", "credentials"}
        assert set(endpoint["authorization"]["credentials"]) == {"name", "key"}
