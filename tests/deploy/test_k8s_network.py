"""The rendered Kubernetes stack's network, as deploy/k8s/README.md says it: ingress denied by default and opened
per service, the backends reached by the gateway only and through headless Services (which the gateway discovers by
DNS), and probes and Prometheus annotations on routes the services really have."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from tests.deploy.k8s import (
    BACKENDS,
    OVERLAYS,
    WITH_COMPONENTS,
    containers_of,
    named,
    of_kind,
    routes_of,
    selects,
    sources_of,
    workloads_of,
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_denied_by_default_and_opened_per_service(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    assert any(
        p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
        for p in of_kind(docs, "NetworkPolicy")
    ), "no default-deny ingress policy"
    backend = BACKENDS[overlay]
    assert sources_of(docs, backend) == {"gateway"}
    assert sources_of(docs, "minio") == {"compressor", "gateway", backend, "minio-init"}
    assert sources_of(docs, "redis") == {"gateway", "compressor"}
    assert sources_of(docs, "gateway") == {"anywhere"}  # the edge
    assert sources_of(docs, "compressor") == {"anywhere"}  # uploads; authenticated like the gateway
    assert sources_of(docs, "minio-init") == set()


def test_the_prometheus_component_admits_only_the_monitoring_namespace(rendered: dict[str, list[dict]]) -> None:
    docs = rendered[WITH_COMPONENTS]
    assert sources_of(docs, "lorax") == {"gateway", "namespace monitoring"}
    assert sources_of(docs, "redis") == {"gateway", "compressor"}


def test_the_external_s3_component_removes_minio(rendered: dict[str, list[dict]]) -> None:
    docs = rendered[WITH_COMPONENTS]
    assert not [doc for doc in docs if "minio" in doc["metadata"]["name"]]
    (config,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].startswith("soppu-s3")]
    assert config["data"]["S3_ENDPOINT_URL"].startswith("https://")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backends_sit_behind_headless_services_only(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    backend = workloads_of(docs)[BACKENDS[overlay]]
    labels = backend["spec"]["template"]["metadata"]["labels"]
    for service in of_kind(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
        if selects({"matchLabels": service["spec"]["selector"]}, labels):
            assert service["spec"]["clusterIP"] == "None", service["metadata"]["name"]
    assert not of_kind(docs, "Ingress")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_discovers_the_backends_through_the_headless_service(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    from gateway_service.settings import BackendConfig

    docs = rendered[overlay]
    (gateway,) = containers_of(workloads_of(docs)["gateway"])
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    (entry,) = json.loads(env["SOPPU_GATEWAY_BACKENDS"])
    config = BackendConfig.model_validate(entry)
    assert config.kind.value == BACKENDS[overlay]
    assert entry["discover"] == "dns"
    assert getattr(config, "discover", "dns") == "dns"  # read as such once the gateway has the field
    url = urlsplit(config.url)
    service = named(docs, "Service", url.hostname)
    assert service["spec"]["clusterIP"] == "None"
    # A headless Service maps no ports: the URL must carry the container's own port.
    (backend,) = containers_of(workloads_of(docs)[BACKENDS[overlay]])
    assert url.port == next(p["containerPort"] for p in backend["ports"] if p["name"] == "http")
    assert env["SOPPU_GATEWAY_REDIS_URL"].startswith("redis://redis:6379")
    (compressor,) = containers_of(workloads_of(docs)["compressor"])
    assert {"name": "SOPPU_COMPRESSOR_REDIS_URL", "value": env["SOPPU_GATEWAY_REDIS_URL"]} in compressor["env"]


def test_the_gateway_knows_the_discovery_field() -> None:
    from gateway_service.settings import BackendConfig

    assert "discover" in BackendConfig.model_fields  # else the overlays' "discover": "dns" would be ignored


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_on_real_routes(rendered: dict[str, list[dict]], overlay: str) -> None:
    for app, workload in workloads_of(rendered[overlay]).items():
        if workload["kind"] == "Job":
            continue
        for container in containers_of(workload):
            assert "readinessProbe" in container and "livenessProbe" in container, f"{app}: probes missing"
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                http = container.get(kind, {}).get("httpGet")
                if http is None:
                    continue
                assert http["path"] in routes_of(container["image"]), f"{app}: {kind} on {http['path']}, no such route"
                assert http["port"] in ports, f"{app}: {kind} on port {http['port']}, not a named container port"
                if app == "lorax":  # LoRAX's /health runs a generation and fails under load
                    assert http["path"] != "/health"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_with_metrics_are_annotated_for_prometheus(rendered: dict[str, list[dict]], overlay: str) -> None:
    annotated = set()
    for app, workload in workloads_of(rendered[overlay]).items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        annotated.add(app)
        (container,) = containers_of(workload)
        assert annotations["prometheus.io/path"] in routes_of(container["image"])
        assert int(annotations["prometheus.io/port"]) in {p["containerPort"] for p in container["ports"]}
    assert annotated == {"gateway", "compressor", BACKENDS[overlay]}
