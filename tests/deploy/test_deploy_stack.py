"""Integration: the real service behind the deploy/ nginx config, scraped by the deploy/
Prometheus config, all on 127.0.0.1 (fixtures in conftest.py).

Request counts are bounded (under 200 in the whole module) and every wait has a deadline.
The rate-limit test runs last: it spends the per-client budget the other tests rely on.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_helpers import (
    ALERT_RULES,
    DASHBOARDS,
    PROMETHEUS_SYNTHETIC,
    Gateway,
    dashboard_exprs,
    exposition_names,
    free_port,
    promql_metric_names,
    recorded_names,
    rule_exprs,
    start_nginx,
    wait_until,
)

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}


def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    """The error shape the service uses, whether nginx or the service answered."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body


def rejected_too_large(client: httpx.Client, service: str) -> float:
    """The service's count of requests it refused as too large."""
    for line in client.get(f"{service}/metrics").text.splitlines():
        if line.startswith('spikeguard_rejected_requests_total{reason="too_large"}'):
            return float(line.split()[-1])
    return 0.0


def png_image(size: int = 28) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), color=128).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


# --- gateway ------------------------------------------------------------------------------


def test_gateway_proxies_classification(gateway: Gateway, client: httpx.Client) -> None:
    response = client.post(
        f"{gateway.url}/classify", files={"file": ("image.png", png_image(), "image/png")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == body["top_k"][0]["label"]
    assert body["purified"] is True and 0 <= body["noise_level"] <= 1
    for header, value in SECURITY_HEADERS.items():
        assert response.headers[header] == value
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert len(response.headers["x-request-id"]) == 32


def test_gateway_keeps_the_demo_pages_own_policy(
    gateway: Gateway, service: str, client: httpx.Client
) -> None:
    """The page's scripts come from the service itself; the gateway's strict default policy
    must not replace (or be added next to) the one the service sends for the page."""
    direct = client.get(f"{service}/")
    through = client.get(f"{gateway.url}/")
    assert through.status_code == 200
    policies = through.headers.get_list("content-security-policy")
    assert policies == [direct.headers["content-security-policy"]]
    assert "script-src 'self'" in policies[0]


def test_gateway_passes_service_errors_through(gateway: Gateway, client: httpx.Client) -> None:
    """A 4xx from the service keeps the service's body; nginx adds only its headers."""
    files = {"file": ("x.png", b"not an image", "image/png")}
    response = client.post(f"{gateway.url}/classify", files=files)
    assert_json_error(response, 400, "not_an_image")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_gateway_hides_metrics(gateway: Gateway, service: str, client: httpx.Client) -> None:
    assert client.get(f"{service}/metrics").status_code == 200
    for path in ("/metrics", "/metrics/", "/metrics?format=json"):
        assert_json_error(client.get(gateway.url + path), 404, "not_found")


def test_gateway_rejects_large_bodies(gateway: Gateway, service: str, client: httpx.Client) -> None:
    headers = {"content-type": "application/octet-stream"}
    before = rejected_too_large(client, service)

    # Far over the limit: nginx answers itself and the service never sees the request.
    response = client.post(
        f"{gateway.url}/classify", content=b"\0" * (11 * 1024 * 1024 + 1), headers=headers
    )
    assert_json_error(response, 413, "too_large")
    assert "gateway" in response.json()["error"]["message"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert rejected_too_large(client, service) == before
    # on a V2 route, V2's error shape, which V2 clients read
    response = client.post(
        f"{gateway.url}/v2/models/any/infer", content=b"\0" * (11 * 1024 * 1024 + 1)
    )
    assert response.status_code == 413 and "gateway" in response.json()["error"]
    assert rejected_too_large(client, service) == before

    # Between the service's limit (10 MiB) and the gateway's: the service's own 413 passes.
    response = client.post(
        f"{gateway.url}/classify", content=b"\0" * (10 * 1024 * 1024 + 512 * 1024), headers=headers
    )
    assert_json_error(response, 413, "too_large")
    assert "gateway" not in response.json()["error"]["message"]
    assert rejected_too_large(client, service) == before + 1


def test_stub_status_only_on_internal_port(gateway: Gateway, client: httpx.Client) -> None:
    internal = client.get(f"{gateway.status_url}/stub_status")
    assert internal.status_code == 200 and internal.text.startswith("Active connections:")
    public = client.get(f"{gateway.url}/stub_status")
    assert "Active connections" not in public.text


def test_gateway_without_upstream_answers_json_502(tmp_path: Path, client: httpx.Client) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    gateway = start_nginx(closed, tmp_path)
    try:
        assert_json_error(client.get(f"{gateway.url}/readyz"), 502, "bad_gateway")
    finally:
        assert gateway.daemon.stop() == 0


# --- Prometheus ---------------------------------------------------------------------------


def query(prometheus: str, promql: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def test_prometheus_scrapes_service_and_gateway(prometheus: str) -> None:
    for job in ("spikeguard-api", "nginx"):
        wait_until(
            lambda job=job: [
                r for r in query(prometheus, f'up{{job="{job}"}}') if r["value"][1] == "1"
            ],
            30,
            f"up{{job={job!r}}} == 1",
        )
    series = query(prometheus, 'count by (__name__) ({__name__=~"spikeguard_.+"})')
    assert series, "no spikeguard_ series scraped"
    assert {"spikeguard_model_info"} <= {s["metric"]["__name__"] for s in series}
    assert query(prometheus, "nginx_up == 1")


def test_prometheus_loaded_the_alert_rules(prometheus: str) -> None:
    expected = {
        group["name"]: {rule.get("alert") or rule["record"] for rule in group["rules"]}
        for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
    }

    def evaluated() -> dict:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule["health"] != "unknown" for rule in rules):
            return {group["name"]: group for group in groups}
        return {}

    groups = wait_until(evaluated, 30, "a first evaluation of every rule")
    assert {name: {rule["name"] for rule in g["rules"]} for name, g in groups.items()} == expected
    for group in groups.values():
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_dashboard_queries_evaluate(prometheus: str) -> None:
    variables = {"$__rate_interval": "1m", "$__interval": "15s", "$endpoint": ".*"}
    for path in sorted(DASHBOARDS.glob("*.json")):
        for expr in dashboard_exprs(path):
            if expr.startswith("label_values("):
                continue  # a Grafana query, not PromQL
            for variable, value in variables.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown Grafana variable in {expr}"
            query(prometheus, expr)


def test_dashboards_and_rules_name_only_exported_metrics(
    service: str, nginx_exporter: str, client: httpx.Client
) -> None:
    # TYPE lines list labelled metrics even before their first observation.
    service_names = exposition_names(client.get(f"{service}/metrics").text)
    exporter_names = exposition_names(client.get(f"{nginx_exporter}/metrics").text)
    recorded = recorded_names(ALERT_RULES)

    sources = {f"alert rule: {expr}": expr for expr in rule_exprs(ALERT_RULES)}
    for path in sorted(DASHBOARDS.glob("*.json")):
        sources |= {f"{path.name}: {expr}": expr for expr in dashboard_exprs(path)}

    unknown = {}
    for where, expr in sources.items():
        for name in promql_metric_names(expr):
            if name.startswith("spikeguard_"):
                known = name in service_names
            elif name.startswith("nginx_"):
                known = name in exporter_names
            else:
                known = name in recorded or name in PROMETHEUS_SYNTHETIC
            if not known:
                unknown.setdefault(name, []).append(where)
    assert not unknown, "metrics the service (or nginx exporter) does not export:\n" + json.dumps(
        unknown, indent=2
    )


# --- last: spends the per-client rate budget ----------------------------------------------


def test_gateway_rate_limits_per_client(gateway: Gateway, client: httpx.Client) -> None:
    """120 requests at once from one address: the burst passes, the rest get 429 JSON."""
    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(lambda _: client.get(f"{gateway.url}/healthz"), range(120)))
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] >= 20, statuses
    for response in responses:
        if response.status_code == 429:
            assert_json_error(response, 429, "rate_limited")
            assert response.headers["retry-after"] == "1"
            assert response.headers["x-frame-options"] == "DENY"
