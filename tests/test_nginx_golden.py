"""The upstream file the router writes, byte for byte, and the shipped nginx configs working with it.

The shipped configs (nginx/nginx.canary.conf, nginx/nginx.prod.conf) name container paths;
the tests move only those paths into tmp_path and run them with a real nginx on loopback.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from console.adapters.nginx import render_upstream
from console.adapters.nginx.render import GENERATION_LOCATION
from console.sandbox.nginx_local import LocalNginx
from tests.fixtures.backends import Backends
from tests.fixtures.nginx import NginxEnv, render_plain_conf, send_requests, wait_for_log_lines
from tests.fixtures.real import free_port, need_binary

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
PROD, CANARY = "app:8000", "app-canary:8000"  # docker-compose service names, both listen on 8000


@pytest.mark.parametrize("weight", [0, 1, 25, 100])
def test_rendered_upstream_matches_golden_file(weight: int) -> None:
    expected = (GOLDEN / f"upstream_{weight}.conf").read_text()
    assert render_upstream("fragrance_app", PROD, CANARY, weight, f"golden-{weight}") == expected


def test_rendered_upstream_with_verify_listen_matches_golden_file() -> None:
    expected = (GOLDEN / "upstream_25_verify_listen.conf").read_text()
    rendered = render_upstream("fragrance_app", PROD, CANARY, 25, "golden-25", verify_listen="127.0.0.1:8089")
    assert rendered == expected
    # the same file as without verify_listen, plus the server at the end
    assert rendered.startswith((GOLDEN / "upstream_25.conf").read_text())


def test_generation_location_in_messages_is_the_shipped_one() -> None:
    """PreflightFailed tells operators to add GENERATION_LOCATION: it must be what nginx.canary.conf has."""
    conf = (ROOT / "nginx" / "nginx.canary.conf").read_text()
    block = re.search(r"location = /__canary/generation \{.*?\}", conf, re.S)
    assert block is not None
    assert " ".join(block.group(0).split()) == GENERATION_LOCATION


@pytest.mark.parametrize("nginx_conf", ["plain", "shipped"])
def test_include_with_verify_listen_passes_nginx_t(tmp_path: Path, nginx_conf: str) -> None:
    """A real `nginx -t` of an nginx.conf that includes the golden file (compose names swapped for
    loopback addresses nginx -t can resolve): an operator's own conf, and the shipped one."""
    need_binary("nginx")
    prefix, port = tmp_path / "nginx", free_port()
    upstream = tmp_path / "conf.d" / "upstream.conf"
    upstream.parent.mkdir()
    golden = (GOLDEN / "upstream_25_verify_listen.conf").read_text()
    upstream.write_text(golden.replace(CANARY, "127.0.0.1:18001").replace(PROD, "127.0.0.1:18000"))
    if nginx_conf == "plain":
        conf = render_plain_conf(prefix, port, upstream)
    else:
        conf = _localize((ROOT / "nginx" / "nginx.canary.conf").read_text(), prefix, port,
                         {"/etc/nginx/conf.d/upstream.conf": str(upstream)})
    nginx = LocalNginx(prefix, port, upstream, conf_text=conf)
    nginx.write_conf()

    r = subprocess.run(nginx.test_command, capture_output=True, text=True, timeout=30)

    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"include {upstream};" in conf) and ("listen 127.0.0.1:8089;" in upstream.read_text())


def test_shipped_upstream_conf_is_the_routers_0_percent_file() -> None:
    shipped = (ROOT / "nginx" / "conf.d" / "upstream.conf").read_text()
    assert shipped == render_upstream("fragrance_app", PROD, CANARY, 0, "initial")


def test_ends_list_one_server_only() -> None:
    """nginx refuses weight=0: 0% must not name the canary at all, 100% not production."""
    zero = render_upstream("fragrance_app", PROD, CANARY, 0, "g")
    full = render_upstream("fragrance_app", PROD, CANARY, 100, "g")
    assert CANARY not in zero and PROD in zero
    assert PROD not in full and CANARY in full


def _localize(conf: str, prefix: Path, port: int, replacements: dict[str, str]) -> str:
    """Move the container paths of a shipped conf into ``prefix``; each needle must be there."""
    swaps = {
        "user nginx;": "user root;" if os.geteuid() == 0 else "",
        "pid /var/run/nginx.pid;": f"pid {prefix}/logs/nginx.pid;\ndaemon off;",
        "/var/log/nginx/": f"{prefix}/logs/",
        "listen 80;": f"listen 127.0.0.1:{port};",
        "http {": (
            "http {\n"
            f"    client_body_temp_path {prefix}/temp/body;\n    proxy_temp_path {prefix}/temp/proxy;\n"
            f"    fastcgi_temp_path {prefix}/temp/fastcgi;\n    uwsgi_temp_path {prefix}/temp/uwsgi;\n"
            f"    scgi_temp_path {prefix}/temp/scgi;"
        ),
        **replacements,
    }
    if not Path("/etc/nginx/mime.types").exists():
        swaps["include /etc/nginx/mime.types;"] = ""
    for needle, value in swaps.items():
        assert needle in conf, f"shipped conf no longer contains {needle!r}; update this test"
        conf = conf.replace(needle, value)
    return conf


def _start(prefix: Path, port: int, upstream: Path, conf: str) -> LocalNginx:
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    nginx = LocalNginx(prefix, port, upstream, conf_text=conf)
    nginx.start()
    return nginx


async def test_shipped_canary_conf_serves_the_routers_file(tmp_path: Path, backends: Backends) -> None:
    need_binary("nginx")
    prefix, port = tmp_path / "nginx", free_port()
    upstream = tmp_path / "conf.d" / "upstream.conf"
    upstream.parent.mkdir()
    upstream.write_text(render_upstream("fragrance_app", backends.production.address, backends.canary.address, 0, "initial"))
    conf = _localize(
        (ROOT / "nginx" / "nginx.canary.conf").read_text(),
        prefix,
        port,
        {"/etc/nginx/conf.d/upstream.conf": str(upstream)},
    )
    nginx = _start(prefix, port, upstream, conf)
    try:
        env = NginxEnv(nginx, backends, upstream, "fragrance_app", tmp_path)
        router = env.router()

        await router.apply(25, "shipped-25")
        split = await asyncio.to_thread(env.send, 400)

        assert (split.production, split.canary, split.other) == (300, 100, 0)
        log = wait_for_log_lines(prefix / "logs" / "canary.log", 400)
        assert len(log) == 400
        assert sum(f"upstream={backends.canary.address}" in ln for ln in log) == 100
        assert all("gen=shipped-25" in ln and " rt=" in ln for ln in log)
    finally:
        nginx.stop()


def test_shipped_prod_conf_never_reaches_the_canary(tmp_path: Path, backends: Backends) -> None:
    need_binary("nginx")
    prefix, port = tmp_path / "nginx", free_port()
    conf = _localize(
        (ROOT / "nginx" / "nginx.prod.conf").read_text(),
        prefix,
        port,
        {"server app:8000;": f"server {backends.production.address};"},
    )
    # the console's file may say 100%: the production conf does not include it
    unused = tmp_path / "upstream.conf"
    unused.write_text(render_upstream("fragrance_app", backends.production.address, backends.canary.address, 100, "g"))
    nginx = _start(prefix, port, unused, conf)
    try:
        split = send_requests(nginx.url, 50, backends)
        assert (split.production, split.canary, split.other) == (50, 0, 0)
        env = NginxEnv(nginx, backends, unused, "fragrance_app", tmp_path)
        assert env.served_generation() == "production-only"
    finally:
        nginx.stop()
