"""The shadow stage (issue 13 item 4): ``[rollout] shadow_period`` adds a first stage at weight 0 in
which nginx mirrors every request to the canary.  The engine on virtual time with a fake router,
the include byte for byte, and a real nginx with counted requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from console.adapters.nginx import NginxRouter
from console.adapters.nginx.render import MIRROR_PATH, mirror_location, render_upstream
from console.adapters.split_source import SplitChecker
from console.core import events as ev
from console.core.clock import FakeClock
from console.core.config import ConfigError, load_config
from console.core.engine import Engine, Settings
from console.core.events import FAIL, INCONCLUSIVE, PASS, SHADOW_INDEX
from console.core.fakes import FakeHealth, FakeRouter, ScriptedChecker
from console.core.journal import Journal, read_records
from console.core.protocols import CheckContext
from console.core.state import fold
from console.sandbox.nginx_local import LocalNginx
from tests.fixtures.backends import Backends
from tests.fixtures.dynamic import LOAD_LUA, need_lua
from tests.fixtures.nginx import UPSTREAM_NAME, NginxEnv, render_plain_conf, write_canary_toml
from tests.fixtures.real import free_port, journal_summary, need_binary, wait_for
from tests.test_engine import OP, gate, kinds, make

GOLDEN = Path(__file__).resolve().parent / "golden"
PROD, CANARY = "app:8000", "app-canary:8000"
CLI = str(Path(sys.executable).parent / "canary-console")


# --------------------------------------------------------------------------- the engine


async def test_the_shadow_stage_comes_first_at_0_with_the_mirror_then_stage_1_without(tmp_path):
    seen_ctx: list[CheckContext] = []
    eng, seen, clock, _ = make(tmp_path, lambda ctx: seen_ctx.append(ctx) or [gate(PASS)], shadow_period=60,
                               stages=[1, 100])
    assert await eng.run() == 0
    assert eng.router.applied == [0, 1, 100] and eng.router.shadows == [True, False, False]
    started = kinds(seen, ev.StageStarted)
    assert [(e.index, e.weight, e.shadow, e.observation_period) for e in started] == [
        (SHADOW_INDEX, 0, True, 60), (0, 1, False, 900), (1, 100, False, 900)]
    intents = [e for e in kinds(seen, ev.RouterIntent) if not e.reason.startswith("preflight")]
    assert [(e.weight, e.shadow) for e in intents] == [(0, True), (1, False), (100, False)]
    assert intents[0].reason.startswith("shadow stage")
    applied = kinds(seen, ev.RouterApplied)[1:]  # after the preflight's
    assert [(e.weight, e.shadow) for e in applied] == [(0, True), (1, False), (100, False)]
    assert kinds(seen, ev.StagePassed)[0].index == SHADOW_INDEX
    assert clock.t == pytest.approx(60 + 900)
    shadow_checks = [c for c in seen_ctx if c.shadow]
    assert shadow_checks and all(c.weight == 0 and c.index == SHADOW_INDEX for c in shadow_checks)
    assert all(not c.shadow for c in seen_ctx if c.weight == 1)
    # the journal says the same, and the fold of it too
    recs = list(read_records(tmp_path / "j.jsonl"))
    assert next(r for r in recs if r["event"] == "stage_started")["shadow"] is True
    assert next(r for r in recs if r["event"] == "deployment_started")["shadow_period"] == 60


async def test_a_critical_failure_in_the_shadow_stage_rolls_back_to_0_without_the_mirror(tmp_path):
    fn = lambda ctx: [gate(FAIL, "schema_failures", critical=True, value=1)] if ctx.shadow else [gate(PASS)]  # noqa: E731
    eng, seen, clock, _ = make(tmp_path, fn, shadow_period=60)
    assert await eng.run() == 3
    assert eng.router.applied == [0, 0] and eng.router.shadows == [True, False] and eng.router.shadow is False
    assert [e.index for e in kinds(seen, ev.StageStarted)] == [SHADOW_INDEX]  # no stage 1
    rb = kinds(seen, ev.RolledBack)[0]
    assert rb.index == SHADOW_INDEX and rb.from_weight == 0 and "schema_failures" in rb.reason
    assert clock.t == pytest.approx(15)  # the first check
    # nothing above 0% was ever intended
    assert all(e.weight == 0 for e in kinds(seen, ev.RouterIntent))
    st = fold(seen)
    assert st.state == "rolled back" and st.stage_label() == "shadow (0%)"


async def test_consecutive_failures_in_the_shadow_stage_roll_back(tmp_path):
    fn = lambda ctx: [gate(FAIL, value=0.01)] if ctx.shadow else [gate(PASS)]  # noqa: E731
    eng, seen, _, _ = make(tmp_path, fn, shadow_period=600)
    assert await eng.run() == 3
    assert eng.router.applied == [0, 0] and eng.router.shadows == [True, False]
    assert [c.breaches["error_rate"] for c in kinds(seen, ev.CheckCompleted)] == [1, 2, 3]


async def test_no_shadow_period_no_shadow_stage(tmp_path):
    eng, seen, _, _ = make(tmp_path, stages=[1, 100])
    assert await eng.run() == 0
    assert eng.router.applied == [1, 100] and not any(eng.router.shadows)
    assert not any(e.shadow for e in kinds(seen, ev.StageStarted))


async def test_a_resume_past_the_shadow_stage_skips_it(tmp_path):
    s = Settings(stages=[1, 5, 100], observation_period=900, check_interval=15, shadow_period=60)
    # resumed at stage 2
    eng = Engine(s, version="v0.2.0", router=FakeRouter(weight=1), journal=Journal(tmp_path / "a.jsonl"),
                 clock=FakeClock(), checkers=[ScriptedChecker(None)], health=FakeHealth(), operator=OP,
                 start_index=1, resumed=True)
    assert await eng.run() == 0 and eng.router.applied == [5, 100] and not any(eng.router.shadows)
    # resumed at stage 1 while users were already on the canary: no shadow stage again
    eng = Engine(s, version="v0.2.0", router=FakeRouter(weight=1), journal=Journal(tmp_path / "b.jsonl"),
                 clock=FakeClock(), checkers=[ScriptedChecker(None)], health=FakeHealth(), operator=OP,
                 start_index=0, resumed=True)
    assert await eng.run() == 0 and eng.router.applied == [1, 5, 100] and not any(eng.router.shadows)
    # resumed at 0% (interrupted in the shadow stage): it runs again
    eng = Engine(s, version="v0.2.0", router=FakeRouter(weight=0), journal=Journal(tmp_path / "c.jsonl"),
                 clock=FakeClock(), checkers=[ScriptedChecker(None)], health=FakeHealth(), operator=OP,
                 start_index=0, resumed=True)
    assert await eng.run() == 0 and eng.router.shadows[0] is True


async def test_step_back_is_refused_in_the_shadow_stage_and_advance_ends_it(tmp_path):
    eng, seen, _, _ = make(tmp_path, shadow_period=600, stages=[1, 100])

    def on(e: ev.Event) -> None:
        if isinstance(e, ev.StageStarted) and e.shadow:
            eng.submit(ev.Intent("step_back", OP))
            eng.submit(ev.Intent("advance", OP))

    eng.add_listener(on)
    assert await eng.run() == 0
    acts = kinds(seen, ev.OperatorAction)
    assert [(a.action, a.accepted) for a in acts] == [("step_back", False), ("advance", True)]
    assert eng.router.shadows == [True, False, False]


def test_the_split_gate_is_inconclusive_in_the_shadow_stage(tmp_path):
    log = tmp_path / "canary.log"
    log.write_text("")
    checker = SplitChecker(log, "127.0.0.1:8000", "127.0.0.1:8001", upstream_file=tmp_path / "upstream.conf")
    ctx = CheckContext("d", "v0.2.0", SHADOW_INDEX, 0, 0.0, 0.0, generation="g", shadow=True)
    (r,) = asyncio.run(checker.check(ctx))
    asyncio.run(checker.aclose())
    assert r.verdict == INCONCLUSIVE and r.detail == "shadow stage: the canary serves no user" and not r.blocking


def test_shadow_period_must_not_be_negative(tmp_path):
    p = tmp_path / "canary.toml"
    p.write_text("[rollout]\nshadow_period = -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={}, check_upstream_dir=False)
    assert "shadow_period" in str(e.value) and "\n" not in str(e.value)
    p.write_text("[rollout]\nshadow_period = 30\n")
    assert load_config(p, environ={}, check_upstream_dir=False)["rollout"]["shadow_period"] == 30


# --------------------------------------------------------------------------- the include


def test_rendered_shadow_include_matches_golden_file():
    on = render_upstream("fragrance_app", PROD, CANARY, 0, "golden-shadow", shadow=True)
    assert on == (GOLDEN / "upstream_0_shadow.conf").read_text()
    off = render_upstream("fragrance_app", PROD, CANARY, 0, "golden-shadow", shadow=False)
    assert off == on.replace("    default 1;\n}", "    default 0;\n}")
    # without a shadow stage configured: the file as before
    assert "canary_shadow" not in render_upstream("fragrance_app", PROD, CANARY, 0, "g")
    # with the override, upstream fragrance_app__canary is defined once
    both = render_upstream("fragrance_app", PROD, CANARY, 25, "g", override_header="X-Canary", shadow=True)
    assert both.count("upstream fragrance_app__canary {") == 1 and "$canary_shadow" in both


def test_a_router_without_a_shadow_stage_refuses_the_mirror(tmp_path):
    r = NginxRouter(tmp_path / "u.conf", "app", "127.0.0.1:1", "127.0.0.1:2", ["true"], ["true"], "")
    with pytest.raises(ValueError, match="shadow_period"):
        asyncio.run(r.apply(0, "g", shadow=True))
    assert not (tmp_path / "u.conf").exists()


# --------------------------------------------------------------------------- real nginx


def mirror_conf(prefix: Path, port: int, upstream: Path) -> str:
    """An operator's nginx.conf with the include and the two shadow-stage additions."""
    conf = render_plain_conf(prefix, port, upstream)
    add, location = mirror_location(UPSTREAM_NAME).split("\n")
    old = f"            proxy_pass http://{UPSTREAM_NAME};\n"
    assert old in conf
    return conf.replace(old, f"{old}            {add}\n        }}\n\n        {location}\n        location /__never {{\n")


@pytest.fixture(params=["reload", "dynamic"])
def shadow_nginx(request: pytest.FixtureRequest, tmp_path: Path, backends: Backends):
    """nginx with the mirror location; ``(env, verify_listen, router_mode)`` with the router's
    keyword arguments for the mode (dynamic: the Lua module loaded, the endpoint on a free port)."""
    dynamic = request.param == "dynamic"
    need_lua() if dynamic else need_binary("nginx")
    prefix = tmp_path / "nginx"
    (prefix / "conf.d").mkdir(parents=True)
    upstream = prefix / "conf.d" / "upstream.conf"
    listen = f"127.0.0.1:{free_port()}"
    mode = {"mode": "dynamic", "dynamic_listen": f"127.0.0.1:{free_port()}"} if dynamic else {}
    upstream.write_text(render_upstream(UPSTREAM_NAME, backends.production.address, backends.canary.address, 0,
                                        "initial", listen, shadow=False, dynamic_listen=mode.get("dynamic_listen", "")))
    port = free_port()
    conf = (LOAD_LUA if dynamic else "") + mirror_conf(prefix, port, upstream)
    nginx = LocalNginx(prefix, port, upstream, upstream_name=UPSTREAM_NAME, conf_text=conf, die_with_parent=True)
    nginx.start()
    env = NginxEnv(nginx, backends, upstream, UPSTREAM_NAME, tmp_path)
    try:
        yield env, listen, mode
    finally:
        nginx.stop()


def send(env: NginxEnv, n: int) -> list[str]:
    """``n`` GETs on one keep-alive connection; who answered each (X-Deployment and the body agree)."""
    who = []
    conn = http.client.HTTPConnection(env.nginx.listen_host, env.nginx.listen_port, timeout=10)
    try:
        for i in range(n):
            conn.request("GET", f"/brief?n={i}")
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 200 and body["deployment"] == resp.getheader("X-Deployment")
            who.append(body["deployment"])
    finally:
        conn.close()
    return who


@pytest.mark.real
def test_nginx_t_passes_with_the_mirror_location(tmp_path):
    need_binary("nginx")
    prefix, port = tmp_path / "nginx", free_port()
    upstream = tmp_path / "conf.d" / "upstream.conf"
    upstream.parent.mkdir()
    golden = (GOLDEN / "upstream_0_shadow.conf").read_text()
    upstream.write_text(golden.replace(CANARY, "127.0.0.1:18001").replace(PROD, "127.0.0.1:18000"))
    conf = mirror_conf(prefix, port, upstream)
    nginx = LocalNginx(prefix, port, upstream, conf_text=conf)
    nginx.write_conf()
    r = subprocess.run(nginx.test_command, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"mirror {MIRROR_PATH};" in conf


@pytest.mark.real
def test_in_the_shadow_stage_production_answers_all_and_the_canary_gets_a_copy_of_each(shadow_nginx):
    env, listen, mode = shadow_nginx  # in both router modes: dynamic mode reloads for the mirror switch
    router = env.router(verify_listen=listen, verify_url=f"http://{listen}/__canary/generation", shadow_stage=True,
                        **mode)
    b = env.backends

    asyncio.run(router.apply(0, "shadow-1", shadow=True))
    assert router.current_weight() == 0 and "default 1;" in env.upstream_file.read_text()
    b.reset()
    who = send(env, 200)
    assert who == ["production"] * 200  # every response is production's
    assert b.production.served == 200
    wait_for(lambda: b.canary.served == 200, timeout=10, what="200 mirrored requests at the canary")
    assert b.production.served == 200

    asyncio.run(router.apply(1, "stage-1"))  # stage 1: the mirror off
    assert "default 0;" in env.upstream_file.read_text()
    b.reset()
    who = send(env, 200)
    assert who.count("canary") == 2 and b.canary.served == 2 and b.production.served == 198

    asyncio.run(router.apply(0, "rollback"))  # 0% without the mirror: nothing reaches the canary
    # dynamic mode: the weight alone changed, so it went over the endpoint, with no reload
    assert ("set" in router.last_timings) == bool(mode) and ("reload" in router.last_timings) != bool(mode)
    b.reset()
    assert send(env, 100) == ["production"] * 100 and b.canary.served == 0


@pytest.mark.real
def test_a_canary_fault_in_the_shadow_stage_rolls_back_before_any_user_was_served_by_it(tmp_path, nginx_env):
    env = nginx_env
    cfg = write_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"},
                            rollout={"observation_period": 1.0, "check_interval": 0.25, "shadow_period": 60.0})
    journal_path = tmp_path / ".canary" / "journal.jsonl"

    def shadow_started() -> bool:
        return journal_path.exists() and any(r["event"] == "stage_started" and r.get("shadow")
                                             for r in read_records(journal_path))

    def fault() -> None:  # the canary's health fails once the shadow stage is live
        wait_for(shadow_started, timeout=30, what="the shadow stage")
        env.backends.canary.healthy = False

    t = threading.Thread(target=fault, daemon=True)
    t.start()
    r = subprocess.run([CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", "--headless", "--json"],
                       capture_output=True, text=True, timeout=90)
    t.join(timeout=5)
    recs = list(read_records(journal_path))
    assert r.returncode == 3, journal_summary(recs) + r.stderr
    applied = [x for x in recs if x["event"] == "router_applied"]
    assert [(x["weight"], x["shadow"]) for x in applied] == [(0, False), (0, True), (0, False)]  # preflight, shadow, rollback
    assert not any(x["weight"] > 0 for x in recs if x["event"] in ("router_intent", "router_applied"))
    rolled = next(x for x in recs if x["event"] == "rolled_back")
    assert rolled["index"] == SHADOW_INDEX and "health" in rolled["reason"]
    assert [x["index"] for x in recs if x["event"] == "stage_started"] == [SHADOW_INDEX]
    assert env.router().current_weight() == 0
