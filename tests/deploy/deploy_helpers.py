"""Helpers shared by the deployment tests: the Prometheus config rendered for 127.0.0.1,
PromQL metric names; processes, nginx and ``render`` come from ``harness/``.

The nginx and Prometheus configs under deploy/ are the ones the tests run. They name compose
hosts (``api:8000``, ``nginx-exporter:9113``) and container ports; ``render`` swaps such
literals for local addresses and insists that every literal it swaps is present.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from harness.gateway import NGINX_CONF, Gateway, MissingBinary, need_binary, render
from harness.gateway import start_nginx as harness_start_nginx
from harness.processes import REPO, Daemon, find_binary, free_port, wait_until

__all__ = ["NGINX_CONF", "REPO", "Daemon", "Gateway", "find_binary", "free_port", "render",
           "wait_until"]  # fmt: skip

DEPLOY = REPO / "deploy"
PROMETHEUS_CONF = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERT_RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

# Names that Prometheus itself synthesises; dashboards and rules may use them freely.
PROMETHEUS_SYNTHETIC = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


def require_binary(name: str, *candidates: str, package: str) -> str:
    try:
        return need_binary(name, *candidates, package=package)
    except MissingBinary as exc:
        pytest.skip(str(exc))


def start_nginx(upstream: str, workdir: Path) -> Gateway:
    """``harness.gateway.start_nginx``, skipping the test where nginx is not installed."""
    require_binary("nginx", "/usr/sbin/nginx", package="nginx-light")
    return harness_start_nginx(upstream, workdir)


def render_prometheus_config(service_target: str, exporter_target: str) -> dict:
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["spikeguard-api"]
    dns = api.pop("dns_sd_configs")
    assert [entry["names"] for entry in dns] == [["api"]], "api job no longer resolves `api`"
    api["static_configs"] = [{"targets": [service_target]}]
    nginx_targets = jobs["nginx"]["static_configs"][0]["targets"]
    assert nginx_targets == ["nginx-exporter:9113"], "nginx job changed; update the rendering"
    jobs["nginx"]["static_configs"][0]["targets"] = [exporter_target]
    return config


# --- PromQL metric names ------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_GRAFANA_LABEL_VALUES = re.compile(r"\blabel_values\s*\(\s*([^,()]*)\s*(?:,[^()]*)?\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:])")
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
        "atan2",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana ``label_values`` query) selects.

    Strips strings, label matchers, ranges, grouping label lists and Grafana variables; what
    remains that is neither a function call, a keyword nor a number is a metric name.
    """
    text = _GRAFANA_LABEL_VALUES.sub(r" \1 ", expr)
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exposition_names(text: str) -> set[str]:
    """Every sample name a Prometheus text exposition can carry, from its TYPE lines.

    A labelled metric with no observations yet shows only HELP/TYPE, so samples alone would
    miss it; a histogram named ``x`` yields ``x_bucket``, ``x_sum`` and ``x_count``.
    """
    suffixes = {
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "counter": ("", "_created"),
    }
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "counter" and not name.endswith("_total"):
                names.update({name + "_total", name + "_created"})
            names.update(name + suffix for suffix in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def dashboard_exprs(path: Path) -> list[str]:
    """PromQL of every panel target, template variable query and annotation of a dashboard."""
    dashboard = json.loads(path.read_text())
    exprs: list[str] = []

    def panels(items: Iterable[dict]) -> Iterable[dict]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            exprs.append(query)
    exprs += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if a.get("expr")]
    return exprs


def rule_groups(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def rule_exprs(path: Path) -> list[str]:
    return [rule["expr"] for group in rule_groups(path) for rule in group["rules"]]


def recorded_names(path: Path) -> set[str]:
    rules = [rule for group in rule_groups(path) for rule in group["rules"]]
    return {rule["record"] for rule in rules if "record" in rule}
