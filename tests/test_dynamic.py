"""Weight changes without a reload (issue 17, ``[nginx] mode = "dynamic"``), with a real nginx that
has the Lua module, real backends and counted requests: the split is exact on fresh and reused
connections, no request fails under keep-alive load across stage changes and a rollback (the same
load in reload mode prints its failures), a restart keeps the stage's weight, a change nginx took
but nobody confirmed rolls back, and an nginx without the module fails the preflight in one line
with nothing changed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from console.adapters.nginx.dynamic import read_dynamic
from console.core.journal import read_records
from console.core.state import last_applied_weight
from tests.fixtures.dynamic import DynamicEnv, Load, SwallowingProxy, start_dynamic_env
from tests.fixtures.nginx import write_canary_toml
from tests.fixtures.real import children, free_port, journal_summary, shutting_down, wait_for

pytestmark = pytest.mark.real

CLI = str(Path(sys.executable).parent / "canary-console")

# A reload command that counts itself, then runs the real one: argv [python, script, count_file, *real].
COUNTING = r"""
import subprocess, sys
open(sys.argv[1], "a").write("reload\n")
sys.exit(subprocess.run(sys.argv[2:]).returncode)
"""


def run(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(cfg), *args], capture_output=True, text=True, timeout=timeout)


def journal(cfg: Path) -> list[dict]:
    return list(read_records(cfg.parent / ".canary" / "journal.jsonl"))


def dynamic_toml(tmp_path: Path, env: DynamicEnv, **nginx: object) -> Path:
    return write_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"},
                             rollout={"observation_period": 0.5, "check_interval": 0.25},
                             nginx={"mode": "dynamic", "dynamic_listen": env.dynamic_listen, **nginx})


def counting_reload(tmp_path: Path, env: DynamicEnv) -> tuple[list[str], Path]:
    script, count = tmp_path / "count_reload.py", tmp_path / "reloads.txt"
    script.write_text(COUNTING)
    return [sys.executable, str(script), str(count), *env.nginx.reload_command], count


def reloads(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


# --------------------------------------------------------------------------- the file


def test_the_dynamic_include_matches_its_golden_file_and_reads_back_like_a_reload_one() -> None:
    from console.adapters.nginx import render_upstream, weight_of

    golden = Path(__file__).resolve().parent / "golden" / "upstream_25_dynamic.conf"
    rendered = render_upstream("fragrance_app", "10.0.0.2:8000", "10.0.0.3:8000", 25, "golden-25",
                               dynamic_listen="127.0.0.1:8090", sticky_key="$cookie_session")
    assert rendered == golden.read_text()
    assert weight_of(rendered, "fragrance_app", "10.0.0.2:8000", "10.0.0.3:8000") == 25
    assert "hash $cookie_session" not in rendered  # the balancer hashes the key itself


# --------------------------------------------------------------------------- the split


def test_the_split_is_exact_at_0_1_1_5_25_and_the_ends_on_fresh_and_reused_connections(dynamic_env: DynamicEnv) -> None:
    env = dynamic_env
    r = env.router()
    workers = set(children(env.nginx.pid))
    for weight, per in ((0, 100), (0.1, 1000), (1, 100), (5, 100), (25, 100), (100, 100), (0, 100)):
        asyncio.run(r.apply(weight, f"split-{weight}"))
        assert "reload" not in r.last_timings and not r.last_fallback, r.last_timings
        canary = round(weight * per / 100)
        reused = env.send(2 * per)
        assert (reused.canary, reused.other) == (2 * canary, 0), (weight, reused)
        fresh = env.send(per, fresh=True)
        assert (fresh.canary, fresh.other) == (canary, 0), (weight, fresh)
        # the access log (the split gate reads it) names the generation the balancer routed by
        wait_for(lambda w=weight: env.access_log.read_text().rstrip().endswith(f"gen=split-{w}"), timeout=5,
                 what="the access log line of the change")
    assert set(children(env.nginx.pid)) == workers  # not one reload: the same workers served it all


def test_sticky_keys_and_the_tester_override_work_in_dynamic_mode(tmp_path: Path, backends) -> None:
    env = start_dynamic_env(tmp_path, backends, sticky_key="$cookie_session")
    try:
        r = env.router()
        on_canary: dict[int, set[int]] = {}
        for weight in (5, 25):
            asyncio.run(r.apply(weight, f"sticky-{weight}"))
            assert "reload" not in r.last_timings
            on_canary[weight] = set()
            for i in range(300):
                before = backends.counts()
                for _ in range(4):
                    send_cookie(env, f"session=user-{i}")
                after = backends.counts()
                can = after["canary"] - before["canary"]
                assert can in (0, 4), f"key {i} saw both versions at {weight}%"
                if can:
                    on_canary[weight].add(i)
            assert abs(100 * len(on_canary[weight]) / 300 - weight) <= 4, (weight, len(on_canary[weight]))
        assert on_canary[5] <= on_canary[25]  # raising the weight only moves keys onto the canary
        asyncio.run(r.apply(0, "sticky-0"))
        assert env.send(100).canary == 0
        asyncio.run(r.apply(100, "sticky-100"))
        assert env.send(100).production == 0
    finally:
        env.nginx.stop()


def send_cookie(env: DynamicEnv, cookie: str) -> None:
    import http.client

    conn = http.client.HTTPConnection(env.nginx.listen_host, env.nginx.listen_port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Cookie": cookie})
        conn.getresponse().read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- restarts and reloads


def test_a_restart_or_a_reload_in_the_middle_of_a_stage_keeps_the_stage_weight(dynamic_env: DynamicEnv) -> None:
    env = dynamic_env
    r = env.router()
    asyncio.run(r.apply(25, "stage-25"))
    assert env.send(100).canary == 25
    env.restart()  # the shared dict starts empty: nginx starts from the file
    assert asyncio.run(read_dynamic(r.dynamic_url)) == ("stage-25", 25, 100)
    assert env.send(100).canary == 25 and env.send(100, fresh=True).canary == 25
    asyncio.run(r.apply(5, "stage-5"))  # and the next change is live again
    assert "reload" not in r.last_timings
    assert env.send(100).canary == 5
    rc = subprocess.run(env.nginx.reload_command, capture_output=True).returncode  # an operator's reload
    assert rc == 0
    wait_for(lambda: shutting_down(env.nginx.pid) == 0, timeout=30, what="the old workers to finish")
    assert env.send(100, fresh=True).canary == 5


def test_a_change_of_addresses_still_reloads_and_a_missing_endpoint_falls_back_to_a_reload(dynamic_env) -> None:
    env = dynamic_env
    asyncio.run(env.router().apply(5, "before"))
    # nothing listens where this router looks for the endpoint: nginx did not take it, so the reload path does
    r = env.router(dynamic_endpoint=f"http://127.0.0.1:{free_port()}/__canary/dynamic")
    asyncio.run(r.apply(25, "fallback-25"))
    assert "reload" in r.last_timings and "connection refused" in r.last_fallback
    assert env.served_generation() == "fallback-25"
    assert env.send(100).canary == 25
    # a router for other addresses: the file changes shape, so that is a reload too
    swapped = env.router(production=env.canary, canary=env.production)
    asyncio.run(swapped.apply(0, "swapped-0"))
    assert "reload" in swapped.last_timings
    assert env.send(100).production == 0  # "production" is the canary backend now, all of it


# --------------------------------------------------------------------------- under load


@pytest.mark.slow
def test_50_keep_alive_clients_across_ten_changes_and_a_rollback_lose_nothing_in_dynamic_mode(dynamic_env) -> None:
    env = dynamic_env
    weights = [1, 5, 10, 25, 50, 75, 50, 25, 10, 5, 0]  # ten changes, then the rollback
    results = {}
    for mode in ("dynamic", "reload"):
        r = env.router(mode=mode)
        asyncio.run(r.apply(0, f"{mode}-start"))
        with Load(env.nginx.listen_host, env.nginx.listen_port, clients=50) as load:

            async def rollout(r=r, mode=mode) -> None:
                for i, w in enumerate(weights):
                    await asyncio.sleep(20 / len(weights))  # pacing: a stage lasts ~1.8 s
                    await r.apply(w, f"{mode}-{i}-{w}")

            asyncio.run(rollout())
        results[mode] = load
        print(f"\n{mode}: {load.total} requests, {sum(load.failures.values())} failed {dict(load.failures)}, "
              f"served {dict(load.answers)}")
    assert results["dynamic"].total > 5000, results["dynamic"].answers
    assert sum(results["dynamic"].failures.values()) == 0, results["dynamic"].failures
    assert env.send(200).canary == 0


# --------------------------------------------------------------------------- the engine


def test_a_rollout_in_dynamic_mode_reloads_only_for_the_preflight_and_confirms_every_stage(tmp_path, dynamic_env):
    env = dynamic_env
    reload, count = counting_reload(tmp_path, env)
    cfg = dynamic_toml(tmp_path, env, reload_command=reload)
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--json", "--skip-checks")
    recs = journal(cfg)
    assert r.returncode == 0, r.stdout + r.stderr + journal_summary(recs)
    assert reloads(count) == 1  # the preflight's; every stage went over the endpoint
    applied = [x["weight"] for x in recs if x["event"] == "router_applied"]
    assert applied[-4:] == [1, 5, 25, 100], journal_summary(recs)
    assert env.send(100).canary == 100
    st = json.loads(run(cfg, "status", "--json").stdout)
    assert st["canary_weight"] == 100 and st["confirmed"] is True


def test_a_raised_stage_nginx_took_but_nobody_confirmed_rolls_back_to_0(tmp_path, dynamic_env):
    env = dynamic_env
    with SwallowingProxy(env.dynamic_listen, "w=5&") as proxy:
        cfg = dynamic_toml(tmp_path, env, dynamic_url=proxy.url, verify_timeout=2.0)
        r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--json", "--skip-checks")
        recs = journal(cfg)
        assert proxy.swallowed.is_set()
    assert r.returncode == 3, r.stdout + journal_summary(recs)
    events = [x["event"] for x in recs]
    failed = next(x for x in recs if x["event"] == "router_failed")
    assert failed["weight"] == 5 and failed["outcome"] == "unconfirmed", failed
    # 5% counts only once read back: after the failure, as a late confirmation, never before
    fives = [i for i, x in enumerate(recs) if x["event"] == "router_applied" and x["weight"] == 5]
    assert all(i > events.index("router_failed") and recs[i].get("late") for i in fives), journal_summary(recs)
    rolled = next(x for x in recs if x["event"] == "rolled_back")
    assert rolled["automatic"]
    assert last_applied_weight(recs) == 0
    assert env.send(200).canary == 0 and env.send(100, fresh=True).canary == 0


# --------------------------------------------------------------------------- no module


def test_preflight_on_an_nginx_without_the_lua_module_exits_4_in_one_line_and_changes_nothing(tmp_path, backends):
    env = start_dynamic_env(tmp_path, backends, lua=False)
    try:
        cfg = dynamic_toml(tmp_path, env, dynamic_listen=f"127.0.0.1:{free_port()}")
        before = env.upstream_file.read_bytes()
        for args in (("check", "--version", "v0.2.0"), ("deploy", "--version", "v0.2.0", "--headless", "--skip-checks")):
            r = run(cfg, *args)
            assert r.returncode == 4, r.stdout + r.stderr
            out = r.stdout.splitlines() + r.stderr.splitlines()
            final = [ln for ln in out if ln.startswith("nginx confirms") or "nothing was changed" in ln]
            assert len(final) == 1, r.stdout + r.stderr
            assert "FAIL" in final[0] and "no Lua module" in final[0], final[0]
            assert 'mode = "reload"' in final[0] and "libnginx-mod-http-lua" in final[0], final[0]
            assert env.upstream_file.read_bytes() == before  # byte for byte
            assert env.send(100).canary == 0
        assert not any(x["event"] == "stage_started" for x in journal(cfg))
    finally:
        env.nginx.stop()


# --------------------------------------------------------------------------- a fleet


def test_a_fleet_in_dynamic_mode_moves_every_host_without_a_reload_and_puts_every_host_back(tmp_path):
    from console.core.routing import RouterError
    from tests.fixtures.netns import start_fleet

    with start_fleet(tmp_path, 3, dynamic=True) as fleet:
        router = fleet.router()
        workers = {h.name: h.workers() for h in fleet.hosts}
        for weight in (5, 25):
            asyncio.run(router.apply(weight, f"fleet-{weight}"))
            assert [h["outcome"] for h in router.last_hosts()] == ["confirmed"] * 3
            for h in fleet.hosts:
                split = fleet.send(h, 100)
                assert (split.canary, split.other) == (weight, 0), (h.name, weight, split)
        assert {h.name: h.workers() for h in fleet.hosts} == workers  # no host reloaded
        # edge-2's endpoint cannot be reached (nothing listens where its router looks now): a raise
        # to 50% is put back on every host, over the endpoints, and no host reloads
        r2 = router.hosts[1][1]
        r2.dynamic_url = f"http://{fleet.hosts[1].ip}:{free_port()}/__canary/dynamic"
        with pytest.raises(RouterError, match="edge-2"):
            asyncio.run(router.apply(50, "fleet-50"))
        outcomes = {h["name"]: h["outcome"] for h in router.last_hosts()}
        assert outcomes == {"edge-1": "restored", "edge-2": "reload failed", "edge-3": "restored"}, outcomes
        for h in fleet.hosts:
            assert fleet.send(h, 100).canary == 25, h.name
        assert {h.name: h.workers() for h in fleet.hosts} == workers


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("nginx", "needle"), [
    ({"mode": "fast"}, "[nginx] mode = 'fast' is not valid; allowed: reload or dynamic"),
    ({"mode": "dynamic", "dynamic_listen": "10.0.0.1:8090"}, "dynamic_listen = '10.0.0.1:8090' is not valid"),
    ({"mode": "dynamic", "dynamic_listen": ""}, "dynamic_listen = '' is not valid"),
    ({"mode": "dynamic", "canary": "app:8001"}, "canary = 'app:8001' is not valid with mode = \"dynamic\""),
    ({"mode": "dynamic", "dynamic_url": "ftp://x"}, "dynamic_url"),
    ({"mode": "dynamic", "dynamic_listen": "127.0.0.1:8091", "verify_listen": "localhost:8091"},
     "dynamic_listen = '127.0.0.1:8091' is verify_listen's address too; allowed: two different loopback ports"),
])
def test_bad_dynamic_settings_exit_2_with_one_line_and_change_nothing(tmp_path, nginx_env, nginx, needle) -> None:
    cfg = write_canary_toml(tmp_path / "canary.toml", nginx_env, nginx=nginx)
    before = nginx_env.upstream_file.read_bytes()
    r = run(cfg, "weights", "5")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert nginx_env.upstream_file.read_bytes() == before
    assert not (tmp_path / ".canary" / "journal.jsonl").exists()
