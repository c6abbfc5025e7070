"""Fixtures that run the deployment's real parts on 127.0.0.1, without Docker.

One stack per module: the service (``python -m service`` on ``tiny_model_dir``), Debian's
nginx with deploy/nginx/nginx.conf, Debian's prometheus-nginx-exporter reading nginx's
stub_status, and Debian's prometheus with deploy/prometheus/{prometheus,alerts}.yml. Every
process listens on a free port, runs as the current user with its files in a temp dir, and is
stopped with SIGTERM at the end.

Rendering (the only differences from the compose stack), see ``render`` and the headers of the
two config files:
  nginx:      "listen 8080;" / "listen 8081;" -> 127.0.0.1:<free port>,
              "http://api:8000" -> "http://127.0.0.1:<service port>"
  prometheus: intervals 1s; the api job's dns_sd_configs -> static 127.0.0.1:<service port>;
              "nginx-exporter:9113" -> "127.0.0.1:<exporter port>"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_helpers import (
    ALERT_RULES,
    Daemon,
    Gateway,
    free_port,
    render_prometheus_config,
    require_binary,
    start_nginx,
    wait_until,
)

from harness.service import ServiceProcess

STARTUP_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the real service on the tiny exported model."""
    with ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("service")) as process:
        process.wait_ready(STARTUP_TIMEOUT_S)
        yield process.url


@pytest.fixture(scope="module")
def gateway(service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    upstream = service.removeprefix("http://")
    gateway = start_nginx(upstream, tmp_path_factory.mktemp("nginx"))
    yield gateway
    assert gateway.daemon.stop() == 0, gateway.daemon.log_tail()


@pytest.fixture(scope="module")
def nginx_exporter(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exporter = require_binary("prometheus-nginx-exporter", package="prometheus-nginx-exporter")
    port = free_port()
    argv = [
        exporter,
        f"-nginx.scrape-uri={gateway.status_url}/stub_status",
        f"-web.listen-address=127.0.0.1:{port}",
    ]
    daemon = Daemon("nginx-exporter", argv, tmp_path_factory.mktemp("nginx-exporter"))
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            daemon.assert_running()
            return "nginx_up 1" in httpx.get(f"{base}/metrics", timeout=2).text

        wait_until(up, 20, "prometheus-nginx-exporter")
        yield base
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def prometheus(
    service: str, nginx_exporter: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of Debian's prometheus scraping the service and nginx via the exporter."""
    binary = require_binary("prometheus", package="prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = render_prometheus_config(
        service.removeprefix("http://"), nginx_exporter.removeprefix("http://")
    )
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    # rule_files is relative to the config: the rules file itself, unchanged.
    (workdir / ALERT_RULES.name).symlink_to(ALERT_RULES)
    port = free_port()
    argv = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    daemon = Daemon("prometheus", argv, workdir)
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            daemon.assert_running()
            return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200

        wait_until(ready, 60, "prometheus /-/ready")
        yield base
    finally:
        daemon.stop()
