"""Routing beyond plain weights (issue 13 items 2 and 3), with a real nginx and counted requests:
a sticky split on an nginx variable, and a tester's override by header or cookie."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from console.adapters.nginx import NginxRouter
from console.adapters.nginx.render import render_upstream
from console.core.config import load_config
from console.sandbox.nginx_local import LocalNginx
from tests.fixtures.backends import Backends
from tests.fixtures.dynamic import LOAD_LUA, need_lua
from tests.fixtures.nginx import UPSTREAM_NAME, NginxEnv, render_plain_conf, write_canary_toml
from tests.fixtures.real import free_port, need_binary

CLI = str(Path(sys.executable).parent / "canary-console")
ROUTE = f"${UPSTREAM_NAME}_route"


@pytest.fixture(params=["reload", "dynamic"])
def routed_nginx(request, tmp_path: Path, backends: Backends):
    """An operator's nginx.conf that proxies to ``$fragrance_app_route`` (as the override needs),
    with verification through verify_listen; the include starts at 0%.  In both ``[nginx] mode``s
    (dynamic: nginx.conf loads the Lua module, the router sets weights over the endpoint)."""
    need_binary("nginx")
    dynamic = request.param == "dynamic"
    if dynamic:
        need_lua()
    prefix = tmp_path / "nginx"
    (prefix / "conf.d").mkdir(parents=True)
    upstream = prefix / "conf.d" / "upstream.conf"
    listen = f"127.0.0.1:{free_port()}"
    routing = {"override_header": "X-Canary", "override_cookie": "canary"}
    mode = {"mode": "dynamic", "dynamic_listen": f"127.0.0.1:{free_port()}"} if dynamic else {}
    upstream.write_text(render_upstream(UPSTREAM_NAME, backends.production.address, backends.canary.address, 0, "initial",
                                        listen, **routing, dynamic_listen=mode.get("dynamic_listen", "")))
    port = free_port()
    conf = render_plain_conf(prefix, port, upstream).replace(f"proxy_pass http://{UPSTREAM_NAME};", f"proxy_pass http://{ROUTE};")
    conf = LOAD_LUA + conf if dynamic else conf
    assert ROUTE in conf
    nginx = LocalNginx(prefix, port, upstream, upstream_name=UPSTREAM_NAME, conf_text=conf, die_with_parent=True)
    nginx.start()
    env = NginxEnv(nginx, backends, upstream, UPSTREAM_NAME, tmp_path)
    try:
        yield env, listen, {**routing, **mode}
    finally:
        nginx.stop()


def send(env: NginxEnv, n: int, headers: dict[str, str]) -> tuple[int, int]:
    """(production, canary) as counted by the backends, for ``n`` requests with ``headers``."""
    before = env.backends.counts()
    conn = http.client.HTTPConnection(env.nginx.listen_host, env.nginx.listen_port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", "/", headers=headers)
            conn.getresponse().read()
    finally:
        conn.close()
    after = env.backends.counts()
    return after["production"] - before["production"], after["canary"] - before["canary"]


def router(env: NginxEnv, listen: str, mode: str = "reload", dynamic_listen: str = "", **routing: str) -> NginxRouter:
    return env.router(verify_listen=listen, verify_url=f"http://{listen}/__canary/generation", routing=routing,
                      mode=mode, dynamic_listen=dynamic_listen)


@pytest.mark.slow
@pytest.mark.real
def test_sticky_keys_stay_on_one_version_and_the_share_of_keys_follows_the_weight(nginx_env: NginxEnv) -> None:
    env = nginx_env
    r = env.router(routing={"sticky_key": "$cookie_session"})
    canary_keys: dict[int, set[int]] = {}
    for weight in (5, 25):
        asyncio.run(r.apply(weight, f"sticky-{weight}"))
        canary_keys[weight] = set()
        for i in range(500):
            prod, can = send(env, 10, {"Cookie": f"session=user-{i}"})
            assert (prod, can) in ((10, 0), (0, 10)), f"key {i} saw both versions at {weight}%: {prod}/{can}"
            if can:
                canary_keys[weight].add(i)
        assert abs(100 * len(canary_keys[weight]) / 500 - weight) <= 3, (weight, len(canary_keys[weight]))
    assert canary_keys[5] <= canary_keys[25]  # raising the weight only moves users onto the canary
    for weight, expected in ((0, (100, 0)), (100, (0, 100))):  # the ends stay exact
        asyncio.run(r.apply(weight, f"sticky-{weight}"))
        assert send(env, 100, {"Cookie": "session=anyone"}) == expected


@pytest.mark.real
def test_a_tester_override_reaches_the_canary_at_0_and_production_at_100(routed_nginx) -> None:
    env, listen, routing = routed_nginx
    r = router(env, listen, **routing)
    asyncio.run(r.apply(0, "override-0"))
    assert send(env, 50, {}) == (50, 0)
    assert send(env, 50, {"X-Canary": "always"}) == (0, 50)
    assert send(env, 50, {"Cookie": "canary=always"}) == (0, 50)
    assert send(env, 50, {"X-Canary": "maybe"}) == (50, 0)  # only always / never count
    asyncio.run(r.apply(100, "override-100"))
    assert send(env, 50, {}) == (0, 50)
    assert send(env, 50, {"X-Canary": "never"}) == (50, 0)
    assert send(env, 50, {"Cookie": "canary=never"}) == (50, 0)
    assert send(env, 50, {"X-Canary": "never", "Cookie": "canary=always"}) == (50, 0)  # the header wins
    asyncio.run(r.apply(25, "override-25"))
    assert send(env, 100, {}) == (75, 25)  # without a choice, the exact split
    assert send(env, 40, {"X-Canary": "always"}) == (0, 40)


@pytest.mark.parametrize(("key", "value"), [("sticky_key", "cookie_session"), ("sticky_key", "$cookie session"),
                                            ("override_header", "X Canary"), ("override_cookie", "can-ary")])
def test_bad_routing_input_exits_2_with_one_line_and_changes_nothing(tmp_path: Path, nginx_env: NginxEnv, key: str,
                                                                       value: str) -> None:
    cfg = write_canary_toml(tmp_path / "canary.toml", nginx_env, routing={key: value})
    before = nginx_env.upstream_file.read_bytes()
    r = subprocess.run([CLI, "--config", str(cfg), "weights", "5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"[routing] {key}" in lines[0] and "allowed" in lines[0], r.stderr
    assert nginx_env.upstream_file.read_bytes() == before


def test_routing_from_the_config_reaches_the_file(tmp_path: Path, nginx_env: NginxEnv) -> None:
    cfg = load_config(write_canary_toml(tmp_path / "canary.toml", nginx_env,
                                        routing={"sticky_key": "$remote_addr", "override_header": "X-Canary"}))
    text = NginxRouter.from_config(cfg).render(25, "g")
    assert "hash $remote_addr;" in text and f"map \"$http_x_canary:\" {ROUTE}" in text
    assert "hash" not in NginxRouter.from_config(cfg).render(0, "g").split("upstream fragrance_app__")[0]


def test_rendered_routing_matches_golden_file() -> None:
    golden = Path(__file__).parent / "golden" / "upstream_25_routing.conf"
    text = render_upstream(UPSTREAM_NAME, "app:8000", "app-canary:8000", 25, "golden-25", sticky_key="$cookie_session",
                           override_header="X-Canary", override_cookie="canary")
    assert text == golden.read_text()
