"""The engine's exporter (console/adapters/exporter.py, `[exporter] listen`).

In process: the series that events become, the rollback reasons' bounded labels, the linger
(serve until one scrape has read the final state), a taken port, the wiring (nothing loaded when
off).  Real (marked ``real``): a real Prometheus scrapes the exporter of a headless
`canary-console deploy` through a real nginx: the weight follows 1, 5, 25, 100%, and a rollback
on an unhealthy canary increments the rollbacks counter with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from console.core import events as ev
from console.core.config import ConfigError, load_config
from console.core.events import FAIL, INCONCLUSIVE, PASS, GateResult

ROOT = Path(__file__).resolve().parents[1]
BASE = {"deployment_id": "v0.2.0-20260101T000000Z-abcd", "version": "v0.2.0"}


def write_toml(tmp_path: Path, text: str) -> Path:
    (tmp_path / "nginx" / "conf.d").mkdir(parents=True, exist_ok=True)
    p = tmp_path / "canary.toml"
    p.write_text(text)
    return p


def samples(exporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exporter's registry: (name, sorted labels) -> value."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(generate_latest(exporter.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(exporter, name: str, **labels: str) -> float | None:
    return samples(exporter).get((name, tuple(sorted(labels.items()))))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def port_closed(port: int) -> bool:
    from tests.fixtures.real import port_listening

    return not port_listening(port)


def exporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("canary-exporter")]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("listen, host, port", [
    ("127.0.0.1:9464", "127.0.0.1", 9464), ("0.0.0.0:9464", "0.0.0.0", 9464), ("10.1.2.3:9100", "10.1.2.3", 9100),
    ("[::1]:9464", "::1", 9464), ("[::]:9464", "::", 9464), ("localhost:9464", "127.0.0.1", 9464),
])
def test_listen_accepts_any_ip(tmp_path, listen, host, port):
    from console.core.config import parse_listen

    cfg = load_config(write_toml(tmp_path, f'[exporter]\nlisten = "{listen}"\n'), environ={})
    assert cfg["exporter"]["listen"] == listen
    assert parse_listen(listen) == (host, port)


def test_exporter_is_off_by_default(tmp_path):
    cfg = load_config(write_toml(tmp_path, ""), environ={})
    assert cfg["exporter"] == {"listen": "", "linger": 15.0}


@pytest.mark.parametrize("text, needle", [
    ('listen = "9464"', "not host:port"),
    ('listen = "127.0.0.1:"', "is not 1..65535"),
    ('listen = "127.0.0.1:70000"', "is not 1..65535"),
    ('listen = "metrics.example.com:9464"', "is not an IP address or localhost"),
    ('listen = "::1:9464"', "in brackets"),
    ('listen = "127.0.0.1: 9464"', "not host:port"),
    ("listen = 9464", "a string"),
    ("linger = -1", "linger = -1 is not valid"),
    ('lingr = 1', "unknown key [exporter] lingr"),
])
def test_bad_exporter_config_is_one_clear_line(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write_toml(tmp_path, f"[exporter]\n{text}\n"), environ={})
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert "[exporter]" in msg


def test_cli_refuses_a_bad_listen_with_exit_2_and_one_line(tmp_path):
    p = write_toml(tmp_path, '[exporter]\nlisten = "prometheus:9464"\n')
    proc = subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(p), "deploy", "--version", "v0.2.0",
                           "--headless", "--foreground", "--skip-checks"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "[exporter] listen = 'prometheus:9464' is not valid" in lines[0], proc.stderr
    assert not (tmp_path / ".canary").exists()  # nothing was journaled


# --------------------------------------------------------------------------- wiring and import hygiene

_WIRING_PROBE = """
import sys
from console.core.config import load_config
from console.core.fakes import FakeRouter
from console.core.journal import Journal
from console.wiring import build_engine
cfg = load_config(sys.argv[1], environ={})
eng = build_engine(cfg, "v0.2.0", journal=Journal(sys.argv[2]), router=FakeRouter(), checkers=[])
print(",".join(type(s).__name__ for s in eng.services), "prometheus_client" in sys.modules)
"""


@pytest.mark.parametrize("on", [False, True])
def test_prometheus_client_is_imported_only_when_the_exporter_is_on(tmp_path, on):
    p = write_toml(tmp_path, '[exporter]\nlisten = "127.0.0.1:9464"\n' if on else "")
    proc = subprocess.run([sys.executable, "-c", _WIRING_PROBE, str(p), str(tmp_path / "j.jsonl")], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == (["Exporter", "True"] if on else ["False"]), proc.stdout


async def test_wiring_attaches_the_exporter_to_a_real_engine_and_stops_it(tmp_path):
    """build_engine with [exporter] listen: the engine serves /metrics while it runs, the check
    durations are measured, and the port and the thread are gone when run() returns."""
    from console.core.clock import FakeClock
    from console.core.fakes import FakeRouter, ScriptedChecker
    from console.core.journal import Journal
    from console.wiring import build_engine
    from tests.fixtures.real import free_port

    port = free_port()
    p = write_toml(tmp_path, f'[exporter]\nlisten = "127.0.0.1:{port}"\nlinger = 0\n'
                             '[health]\ncanary_url = ""\n[rollout]\nobservation_period = 30\ncheck_interval = 10\n')
    cfg = load_config(p, environ={})
    scraped: list[str] = []

    def at_stage_2(e: ev.Event) -> None:
        if isinstance(e, ev.StageStarted) and e.index == 1:
            scraped.append(scrape(port))  # from the loop: the server answers from its own thread

    eng = build_engine(cfg, "v0.2.0", journal=Journal(tmp_path / "j.jsonl"), clock=FakeClock(), router=FakeRouter(),
                       checkers=[ScriptedChecker()], listeners=[at_stage_2])
    exporter = next(s for s in eng.services if type(s).__name__ == "Exporter")
    assert [c.name for c in eng.checkers] == ["scripted"]
    assert await eng.run() == 0
    assert 'canary_console_canary_weight_ratio 0.05' in scraped[0] and "canary_console_engine_up 1.0" in scraped[0]
    assert value(exporter, "canary_console_canary_weight_ratio") == 1.0
    assert value(exporter, "canary_console_state", state="at_100") == 1.0
    assert value(exporter, "canary_console_engine_up") == 0.0
    assert value(exporter, "canary_console_check_duration_seconds_count", checker="scripted") == 9.0  # 3 per stage
    assert port_closed(port) and not exporter_threads()


# --------------------------------------------------------------------------- series from events


def rollout_events() -> list[ev.Event]:
    gates = (
        GateResult("health", PASS, value=3.1, critical=True, window="now"),
        GateResult("error_rate", FAIL, value=0.02, threshold=0.005, production_value=0.001, window="5m", samples=300),
        GateResult("p95_latency.fast", INCONCLUSIVE, value=None, threshold=2.5, window="5m", samples=3),
        GateResult("seq.errors", INCONCLUSIVE, value=4.0, threshold=100.0, window="rollout", samples=300,
                   extra={"e_value": 4.0, "threshold": 100.0, "bound": 1.8}),
    )
    return [
        ev.DeploymentStarted(ts="2026-01-01T00:00:00.000Z", stages=(1, 5, 25, 100), check_interval=15.0,
                             observation_period=900.0, **BASE),
        ev.RouterApplied(ts="2026-01-01T00:00:00.100Z", weight=0, duration_ms=40.0, **BASE),
        ev.RouterApplied(ts="2026-01-01T00:00:00.300Z", weight=1, duration_ms=120.0, **BASE),
        ev.StageStarted(ts="2026-01-01T00:00:00.300Z", index=0, weight=1, total=4, observation_period=900.0, **BASE),
        ev.CheckCompleted(ts="2026-01-01T00:00:15.000Z", index=0, weight=1, results=gates, breaches={"error_rate": 1}, **BASE),
    ]


def test_events_become_the_documented_series():
    from console.adapters.exporter import Exporter

    x = Exporter("127.0.0.1", 0)
    for e in rollout_events():
        x.observe(e)
    s = samples(x)
    t0 = 1767225600.0  # 2026-01-01T00:00:00Z
    assert s[("canary_console_rollout_info", (("deployment_id", BASE["deployment_id"]), ("dry_run", "false"),
                                             ("version", "v0.2.0")))] == 1.0
    assert value(x, "canary_console_rollout_start_timestamp_seconds") == t0
    assert value(x, "canary_console_canary_weight_ratio") == 0.01  # a ratio: 1% is 0.01
    assert value(x, "canary_console_stage_index") == 0 and value(x, "canary_console_stages") == 4
    states = {dict(k[1])["state"]: v for k, v in s.items() if k[0] == "canary_console_state"}
    assert states == {"starting": 0, "observing": 1, "paused": 0, "holding": 0, "rolling_back": 0, "rolled_back": 0,
                      "at_100": 0, "promoted": 0, "interrupted": 0, "failed": 0}
    assert value(x, "canary_console_state_entered_timestamp_seconds") == t0 + 0.3
    assert value(x, "canary_console_check_interval_seconds") == 15.0
    assert value(x, "canary_console_last_check_timestamp_seconds") == t0 + 15
    assert value(x, "canary_console_gate_value", gate="error_rate") == 0.02
    assert value(x, "canary_console_gate_threshold", gate="error_rate") == 0.005
    assert value(x, "canary_console_gate_production_value", gate="error_rate") == 0.001
    assert value(x, "canary_console_gate_breaches", gate="error_rate") == 1
    assert value(x, "canary_console_gate_value", gate="p95_latency.fast") is None  # no data: no sample
    assert value(x, "canary_console_gate_threshold", gate="p95_latency.fast") == 2.5
    verdicts = {dict(k[1])["verdict"]: v for k, v in s.items()
                if k[0] == "canary_console_gate_verdict" and dict(k[1])["gate"] == "error_rate"}
    assert verdicts == {"pass": 0, "fail": 1, "inconclusive": 0, "error": 0}
    assert value(x, "canary_console_analysis_e_value", gate="seq.errors") == 4.0
    assert value(x, "canary_console_analysis_threshold", gate="seq.errors") == 100.0
    assert value(x, "canary_console_analysis_bound", gate="seq.errors") == 1.8
    assert value(x, "canary_console_router_apply_duration_seconds_count") == 2
    assert value(x, "canary_console_router_apply_duration_seconds_sum") == pytest.approx(0.16)
    assert value(x, "canary_console_router_last_apply_duration_seconds") == 0.12
    # every rollback counter a rollback could increment is there at 0 (increase() sees the first one)
    rb = {(dict(k[1])["reason"], dict(k[1])["kind"]): v for k, v in s.items() if k[0] == "canary_console_rollbacks_total"}
    assert rb == {("manual", "manual"): 0, ("router", "automatic"): 0, ("metrics_unavailable", "automatic"): 0,
                  ("inconclusive", "automatic"): 0, ("other", "automatic"): 0, ("health", "automatic"): 0,
                  ("error_rate", "automatic"): 0, ("p95_latency.fast", "automatic"): 0, ("seq.errors", "automatic"): 0}
    assert all(name.startswith("canary_console_") for name, _ in s)


@pytest.mark.parametrize("reason, automatic, label", [
    ("error_rate 0.02 vs threshold 0.005 (5m, n=300) for 3 checks in a row", True, "error_rate"),
    ("health 2.1 (now): HTTP 503", True, "health"),
    ("seq.errors 140 vs threshold 100 (rollout, n=900): canary 5xx rate > 1x production's", True, "seq.errors"),
    ("router: the change to canary 5% was not confirmed: timeout", True, "router"),
    ("metrics unavailable for 3 checks: prometheus: connection refused", True, "metrics_unavailable"),
    ("inconclusive after 1800s of observation: p95_latency.fast inconclusive", True, "inconclusive"),
    ("manual rollback by alice@10.0.0.7", False, "manual"),
    ("error_rate looks wrong to me", False, "manual"),  # an operator's words never become a label
    ("something new 12345", True, "other"),
])
def test_a_rollback_counts_once_under_a_bounded_reason(reason, automatic, label):
    from console.adapters.exporter import Exporter

    x = Exporter("127.0.0.1", 0)
    for e in rollout_events():
        x.observe(e)
    x.observe(ev.RolledBack(ts="2026-01-01T00:01:00.000Z", reason=reason, automatic=automatic, from_weight=1, **BASE))
    x.observe(ev.RouterApplied(ts="2026-01-01T00:01:00.050Z", weight=0, duration_ms=50.0, **BASE))
    kind = "automatic" if automatic else "manual"
    s = samples(x)
    counted = {k: v for k, v in s.items() if k[0] == "canary_console_rollbacks_total" and v}
    assert counted == {("canary_console_rollbacks_total", (("kind", kind), ("reason", label))): 1.0}
    ts = {k: v for k, v in s.items() if k[0] == "canary_console_last_rollback_timestamp_seconds"}
    assert ts == {("canary_console_last_rollback_timestamp_seconds", (("kind", kind), ("reason", label))): 1767225660.0}
    assert value(x, "canary_console_canary_weight_ratio") == 0.0


def test_a_dry_run_exports_no_weight():
    from console.adapters.exporter import Exporter

    x = Exporter("127.0.0.1", 0)
    for e in rollout_events():
        x.observe(dataclasses.replace(e, dry_run=True))
    assert value(x, "canary_console_canary_weight_ratio") is None  # nginx was not changed
    assert value(x, "canary_console_router_apply_duration_seconds_count") == 0
    assert ("canary_console_rollout_info", (("deployment_id", BASE["deployment_id"]), ("dry_run", "true"),
                                            ("version", "v0.2.0"))) in samples(x)


async def test_the_timed_checker_measures_and_delegates():
    from console.adapters.exporter import Exporter
    from console.core.fakes import ScriptedChecker

    class WithStage(ScriptedChecker):
        async def begin_stage(self, ctx):
            return [{"level": "info", "message": "ready"}]

    x = Exporter("127.0.0.1", 0)
    inner = WithStage()
    timed = x.timed(inner)
    assert timed.name == "scripted" and await timed.begin_stage(None) == [{"level": "info", "message": "ready"}]
    assert getattr(x.timed(ScriptedChecker()), "begin_stage", None) is None  # the engine's optional hook stays optional
    assert [r.gate for r in await timed.check(None)] == ["error_rate"]
    assert value(x, "canary_console_check_duration_seconds_count", checker="scripted") == 1


# --------------------------------------------------------------------------- serving, linger, stopping


async def test_linger_serves_until_one_scrape_has_read_the_end():
    from console.adapters.exporter import Exporter

    x = Exporter("127.0.0.1", 0, linger=30.0)
    x.start()
    port = x.bound_port
    assert port and exporter_threads()
    for e in rollout_events():
        x.observe(e)
    first = await asyncio.to_thread(scrape, port)  # before the end: does not count
    assert "canary_console_engine_up 1.0" in first
    closing = asyncio.ensure_future(x.aclose())
    for _ in range(20):
        await asyncio.sleep(0)  # let aclose run up to its wait (yields to the loop; no time passes)
    assert not closing.done() and x.running
    last = await asyncio.to_thread(scrape, port)  # the scrape that reads the end
    await asyncio.wait_for(closing, 10)
    assert "canary_console_engine_up 0.0" in last
    assert port_closed(port) and not exporter_threads() and not x.running


async def test_linger_is_a_bound_when_nobody_scrapes():
    from console.adapters.exporter import Exporter

    x = Exporter("127.0.0.1", 0, linger=0.2)
    x.start()
    port = x.bound_port
    t0 = time.monotonic()
    await asyncio.wait_for(x.aclose(), 10)
    assert 0.15 <= time.monotonic() - t0 < 5
    assert port_closed(port) and not exporter_threads()


async def test_cancelled_while_lingering_still_stops():
    from console.adapters.exporter import Exporter

    x = Exporter("127.0.0.1", 0, linger=60.0)
    x.start()
    port = x.bound_port
    closing = asyncio.ensure_future(x.aclose())
    for _ in range(20):
        await asyncio.sleep(0)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    assert port_closed(port) and not exporter_threads()


async def test_a_taken_port_is_a_warning_not_a_stop():
    from console.adapters.exporter import Exporter

    notes: list[tuple[str, str]] = []
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        x = Exporter("127.0.0.1", taken, note=lambda level, msg, data: notes.append((level, msg)))
        x.start()
        await asyncio.sleep(0)  # the note goes out on the loop's next turn (after DeploymentStarted)
        assert not x.running and not exporter_threads()
        assert notes and notes[0][0] == "warning" and f"cannot listen on 127.0.0.1:{taken}" in notes[0][1]
        await x.aclose()  # nothing to stop


def ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_listen_address_serves():
    from console.adapters.exporter import Exporter

    x = Exporter("::1", 0, linger=0)
    x.start()
    try:
        def get() -> str:
            with urllib.request.urlopen(f"http://[::1]:{x.bound_port}/metrics", timeout=5) as r:
                return r.read().decode()

        assert "canary_console_engine_up 1.0" in await asyncio.to_thread(get)
    finally:
        await x.aclose()
    assert not exporter_threads()


async def test_only_the_exporters_own_series_are_served():
    """Its own registry: not prometheus_client's global one (no process_ or python_ series)."""
    from console.adapters.exporter import Exporter

    x = Exporter("127.0.0.1", 0, linger=0)
    x.start()
    try:
        text = await asyncio.to_thread(scrape, x.bound_port)
    finally:
        await x.aclose()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert names and all(n.startswith("canary_console_") for n in names), names


# --------------------------------------------------------------------------- real: Prometheus scrapes a rollout


@pytest.fixture(scope="module")
def scraper(tmp_path_factory):
    """One real Prometheus for this module, scraping an exporter port per real test every second;
    ready once it scrapes them (down until an engine listens): its target discovery takes ~5 s,
    paid once here, not by each test."""
    from tests.fixtures.prometheus import LocalPrometheus
    from tests.fixtures.real import free_port, need_binary

    ports = {"stages": free_port(), "rollback": free_port()}
    prom = LocalPrometheus(need_binary("prometheus"), tmp_path_factory.mktemp("prometheus"),
                           [f"127.0.0.1:{p}" for p in ports.values()])
    try:
        prom.start()
        prom.wait_for("up", lambda r: len(r) == len(ports), timeout=30)
        yield prom, ports
    finally:
        prom.stop()


def prom_range(prom, q: str, start: float, end: float) -> list[tuple[float, float]]:
    params = urllib.parse.urlencode({"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "0.5"})
    with urllib.request.urlopen(f"{prom.url}/api/v1/query_range?{params}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    res = body["data"]["result"]
    assert len(res) <= 1, res
    return [(float(t), float(v)) for t, v in res[0]["values"]] if res else []


def changes(points: list[tuple[float, float]]) -> list[float]:
    out: list[float] = []
    for _, v in points:
        if not out or out[-1] != v:
            out.append(v)
    return out


def deploy_toml(tmp_path: Path, nginx_env, port: int, observation: float) -> Path:
    from tests.fixtures.nginx import write_canary_toml

    return write_canary_toml(
        tmp_path / "canary.toml", nginx_env,
        rollout={"stages": [1, 5, 25, 100], "observation_period": observation, "check_interval": 0.25},
        metrics={"source": "none"},
        exporter={"listen": f"127.0.0.1:{port}", "linger": 10.0},
    )


def finish(proc, out: Path, timeout: float) -> tuple[int, str]:
    from tests.fixtures.real import stop_group

    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        pytest.fail(f"deploy did not finish within {timeout:g}s:\n{out.read_text()[-3000:]}")
    return rc, out.read_text()


@pytest.mark.real
def test_prometheus_sees_the_weight_follow_the_stages(tmp_path, nginx_env, scraper):
    from tests.fixtures.real import spawn_headless_deploy, stop_group

    prom, ports = scraper
    port = ports["stages"]
    sel = f'{{instance="127.0.0.1:{port}"}}'
    toml = deploy_toml(tmp_path, nginx_env, port, observation=2.5)
    start = time.time()
    proc = spawn_headless_deploy(toml, tmp_path, tmp_path / "deploy.out")
    try:
        rc, out = finish(proc, tmp_path / "deploy.out", 60)
    finally:
        stop_group(proc)
    end = time.time()
    assert rc == 0, out[-3000:]
    assert port_closed(port)  # the engine's exit stopped the exporter
    weights = changes(prom_range(prom, f"canary_console_canary_weight_ratio{sel}", start, end + 1))
    assert [w for w in weights if w > 0] == [0.01, 0.05, 0.25, 1.0], weights  # every stage, in order
    assert changes(prom_range(prom, f"canary_console_stage_index{sel}", start, end + 1)) == [0, 1, 2, 3]
    # the linger: the end (at 100%, engine ended) was scraped before the series went stale
    at_100 = f'canary_console_state{{instance="127.0.0.1:{port}",state="at_100"}}'
    assert prom.query(f"last_over_time({at_100}[5m])")[0]["value"][1] == "1"
    assert prom.query(f"last_over_time(canary_console_engine_up{sel}[5m])")[0]["value"][1] == "0"
    prom.wait_for(f"canary_console_engine_up{sel}", lambda r: r == [], timeout=10)  # stale once the exporter is gone
    info = prom.query(f"last_over_time(canary_console_rollout_info{sel}[5m])")[0]["metric"]
    assert info["version"] == "v0.2.0" and info["deployment_id"].startswith("v0.2.0-") and info["dry_run"] == "false"


@pytest.mark.real
def test_a_rollback_increments_the_counter_with_its_reason(tmp_path, nginx_env, scraper):
    from console.core.journal import read_records
    from tests.fixtures.real import spawn_headless_deploy, stop_group

    prom, ports = scraper
    port = ports["rollback"]
    i = f'instance="127.0.0.1:{port}"'
    toml = deploy_toml(tmp_path, nginx_env, port, observation=60.0)
    proc = spawn_headless_deploy(toml, tmp_path, tmp_path / "deploy.out")
    try:
        # the canary takes 1% and the health gate has been checked: its counter is there, at 0
        prom.wait_for(f"canary_console_canary_weight_ratio{{{i}}} == 0.01", bool, timeout=30)
        prom.wait_for(f'canary_console_rollbacks_total{{{i},reason="health",kind="automatic"}} == 0', bool, timeout=15)
        nginx_env.backends.canary.healthy = False  # /health answers 503: the critical health gate fails
        rc, out = finish(proc, tmp_path / "deploy.out", 30)
    finally:
        stop_group(proc)
    assert rc == 3, out[-3000:]  # ExitCode.ROLLED_BACK
    rb = [r for r in read_records(tmp_path / ".canary" / "journal.jsonl") if r["event"] == "rolled_back"]
    assert len(rb) == 1 and rb[0]["reason"].startswith("health") and rb[0]["automatic"]
    assert port_closed(port)
    q = f'last_over_time(canary_console_rollbacks_total{{{i},reason="health",kind="automatic"}}[5m])'
    assert prom.query(q)[0]["value"][1] == "1"
    assert float(prom.query(f'increase(canary_console_rollbacks_total{{{i},reason="health"}}[5m])')[0]["value"][1]) > 0
    others = prom.query(f'last_over_time(canary_console_rollbacks_total{{{i},reason!="health"}}[5m]) > 0')
    assert others == []  # counted once, under its reason
    ts = prom.query(f"last_over_time(canary_console_last_rollback_timestamp_seconds{{{i}}}[5m])")
    assert [(r["metric"]["reason"], r["metric"]["kind"]) for r in ts] == [("health", "automatic")]
    assert prom.query(f"last_over_time(canary_console_canary_weight_ratio{{{i}}}[5m])")[0]["value"][1] == "0"
