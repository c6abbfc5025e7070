"""Debian's nginx on ``deploy/nginx/nginx.conf``, rendered for 127.0.0.1.

The config names compose hosts (``api:8000``) and container ports; ``render`` swaps such
literals for local addresses and insists that every literal it swaps is present, so a
config change that the tests no longer match fails loudly instead of testing something
else.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from .processes import REPO, Daemon, find_binary, free_port, wait_until

NGINX_CONF = REPO / "deploy" / "nginx" / "nginx.conf"


class MissingBinary(RuntimeError):
    """A program the harness runs is not installed; the message names its package."""


def need_binary(name: str, *candidates: str, package: str) -> str:
    binary = find_binary(name, *candidates)
    if binary is None:
        raise MissingBinary(
            f"{name} not installed: the Makefile's setup installs Debian's {package}"
        )
    return binary


def render(text: str, replacements: Mapping[str, str]) -> str:
    """Replace each literal key by its value; every key must occur in ``text``."""
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"config no longer contains {old!r}; update the test rendering")
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class Gateway:
    url: str  # public server (compose: published 8080)
    status_url: str  # internal server (compose: 8081, unpublished)
    daemon: Daemon


def start_nginx(upstream: str, workdir: Path) -> Gateway:
    """nginx proxying to ``upstream`` (host:port), ready; raises ``MissingBinary``."""
    nginx = need_binary("nginx", "/usr/sbin/nginx", package="nginx-light")
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
