"""Helpers shared by the deployment tests: config rendering, PromQL metric names, processes.

The nginx and Prometheus configs under deploy/ are the ones the tests run. They name compose
hosts (``api:8000``, ``nginx-exporter:9113``) and container ports; ``render`` swaps such
literals for local addresses and insists that every literal it swaps is present, so a config
change that the tests no longer match fails loudly instead of testing something else.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
PROMETHEUS_CONF = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERT_RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

# Names that Prometheus itself synthesises; dashboards and rules may use them freely.
PROMETHEUS_SYNTHETIC = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


def find_binary(name: str, *candidates: str) -> str | None:
    """Path of an executable from PATH or one of the given absolute paths (e.g. /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return None


def require_binary(name: str, *candidates: str, package: str) -> str:
    binary = find_binary(name, *candidates)
    if binary is None:
        pytest.skip(f"{name} not installed: the Makefile's setup installs Debian's {package}")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(text: str, replacements: Mapping[str, str]) -> str:
    """Replace each literal key by its value; every key must occur in ``text``."""
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"config no longer contains {old!r}; update the test rendering")
        text = text.replace(old, new)
    return text


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Call ``check`` until it returns something truthy (returned) or ``timeout`` elapses."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # retried until the deadline
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}: {last_error}")


class Daemon:
    """A subprocess with its output in a log file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: dict | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd or log_dir,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


# --- the gateway and Prometheus, rendered for 127.0.0.1 --------------------------------------


@dataclass(frozen=True)
class Gateway:
    url: str  # public server (compose: published 8080)
    status_url: str  # internal server (compose: 8081, unpublished)
    daemon: Daemon


def start_nginx(upstream: str, workdir: Path) -> Gateway:
    """Debian's nginx on deploy/nginx/nginx.conf, proxying to ``upstream`` (host:port)."""
    nginx = require_binary("nginx", "/usr/sbin/nginx", package="nginx-light")
    public, internal = free_port(), free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        render(
            NGINX_CONF.read_text(),
            {
                "listen 8080;": f"listen 127.0.0.1:{public};",
                "listen 8081;": f"listen 127.0.0.1:{internal};",
                "http://api:8000": f"http://{upstream}",
            },
        )
    )
    directives = f"daemon off; pid {workdir}/nginx.pid;"
    if os.geteuid() == 0:
        # As root nginx would hand its workers to "nobody"; keep them as the current user.
        user = pwd.getpwuid(os.geteuid()).pw_name
        directives += f" user {user} {grp.getgrgid(os.getegid()).gr_name};"
    argv = [nginx, "-p", f"{workdir}/", "-e", "stderr", "-c", str(conf), "-g", directives]
    daemon = Daemon("nginx", argv, workdir)
    gateway = Gateway(f"http://127.0.0.1:{public}", f"http://127.0.0.1:{internal}", daemon)

    def up() -> bool:
        daemon.assert_running()
        return httpx.get(f"{gateway.status_url}/healthz", timeout=2).status_code == 200

    try:
        wait_until(up, 20, "nginx")
    except BaseException:
        daemon.stop()
        raise
    return gateway


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
