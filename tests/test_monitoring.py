"""The shipped monitoring (monitoring/): Prometheus rules, their promtool unit tests, the Grafana
dashboard.

* ``promtool check rules`` passes on every rule file; ``promtool test rules`` passes on the unit
  tests beside them, which fire each alert on synthetic series and stay silent on a healthy
  rollout; breaking a rule (in a copy) makes promtool fail, so these tests can fail.
* Every query of the dashboard (panels, nested rows' panels) is accepted by a real Prometheus that
  scrapes two demo-service processes and a live exporter, and loads the rules: the query API
  answers ``success`` with data.  Grafana's variables are replaced first (``GRAFANA_VARIABLES``:
  docs/monitoring.md says the same).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT / "monitoring"
RULES = sorted((MON / "rules").glob("*.yml"))
RULE_TESTS = sorted((MON / "rules" / "tests").glob("*.yml"))
DASHBOARD = MON / "grafana" / "canary-deployment.json"
HEALTHY_GROUP = "healthy rollout, promoted, engine gone afterwards"

# what Grafana puts in place of its variables, for a Prometheus scraping every second
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__interval": "1s", "$__range": "5m"}


def promtool() -> str:
    from tests.fixtures.real import need_binary

    return need_binary("promtool")


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def rules_of(kind: str) -> list[dict[str, Any]]:
    """Every rule of the shipped files with ``kind`` ("alert" or "record")."""
    return [r for f in RULES for g in load(f)["groups"] for r in g["rules"] if kind in r]


# --------------------------------------------------------------------------- promtool


@pytest.mark.real
def test_promtool_check_rules_passes_on_every_rule_file():
    assert {p.name for p in RULES} == {"canary-alerts.yml", "canary-recording.yml"}
    for path in RULES:
        proc = run([promtool(), "check", "rules", str(path)])
        assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr, f"{path}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.real
def test_promtool_unit_tests_pass():
    proc = run([promtool(), "test", "rules", *map(str, RULE_TESTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_TESTS) == 2


def test_every_alert_is_tested_firing_and_silent_and_every_recording_rule_is_tested():
    alerts = {r["alert"] for r in rules_of("alert")}
    assert alerts == {"CanaryRolledBack", "CanaryRolloutHolding", "CanaryChecksStalled", "CanaryWithoutEngine",
                      "CanaryRolloutFailed", "CanaryFleetHostDrifted"}
    fires: set[str] = set()
    silent: set[str] = set()
    healthy: set[str] = set()
    exprs: list[str] = []
    for path in RULE_TESTS:
        for t in load(path)["tests"]:
            for a in t.get("alert_rule_test", []):
                (fires if a.get("exp_alerts") else silent).add(a["alertname"])
                if t["name"] == HEALTHY_GROUP and not a.get("exp_alerts"):
                    healthy.add(a["alertname"])
            exprs += [e["expr"] for e in t.get("promql_expr_test", [])]
    assert fires == alerts, f"never fired in a test: {alerts - fires}"
    assert silent == alerts and healthy == alerts, f"never silent on the healthy rollout: {alerts - healthy}"
    records = {r["record"] for r in rules_of("record")}
    assert records and records <= set(exprs), f"recording rules without a test: {records - set(exprs)}"
    for r in rules_of("alert"):  # every alert says how bad and what it is about
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"], r["alert"]


def broken_copy(tmp_path: Path, edit) -> Path:
    """monitoring/rules copied to tmp with ``edit(alerts_doc, recording_doc)`` applied; returns its tests dir."""
    d = tmp_path / "rules"
    (d / "tests").mkdir(parents=True)
    for t in RULE_TESTS:
        (d / "tests" / t.name).write_text(t.read_text())
    docs = {p.name: load(p) for p in RULES}
    edit(docs["canary-alerts.yml"], docs["canary-recording.yml"])
    for name, doc in docs.items():
        (d / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return d / "tests"


@pytest.mark.real
def test_a_copy_that_promtool_accepts_unchanged_is_what_the_breakage_tests_start_from(tmp_path):
    tests = broken_copy(tmp_path, lambda alerts, recording: None)
    proc = run([promtool(), "test", "rules", *map(str, sorted(tests.glob("*.yml")))])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.real
def test_a_syntax_error_fails_promtool_check(tmp_path):
    path = tmp_path / "canary-alerts.yml"
    path.write_text((MON / "rules" / "canary-alerts.yml").read_text().replace("last_over_time(", "last_over_time((", 1))
    proc = run([promtool(), "check", "rules", str(path)])
    assert proc.returncode != 0 and "CanaryRolledBack" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.real
def test_breaking_any_rule_fails_its_promtool_tests(tmp_path):
    """Each alert made silent fails its firing test; each made always-firing fails the healthy
    rollout; a recording rule that computes something else fails its expression test."""
    tool = promtool()
    cases: dict[str, tuple[Any, str]] = {}
    for name in sorted(r["alert"] for r in rules_of("alert")):
        for how, expr in (("never", "vector(1) == 0"), ("always", "vector(1)")):
            def edit(alerts, recording, name=name, expr=expr):
                next(r for g in alerts["groups"] for r in g["rules"] if r.get("alert") == name)["expr"] = expr
            cases[f"{name} {how}"] = (edit, name if how == "never" else HEALTHY_GROUP)

    def p50(alerts, recording):
        r = next(r for g in recording["groups"] for r in g["rules"] if r["record"].endswith(":p95_rate5m"))
        r["expr"] = r["expr"].replace("0.95", "0.5")
    cases["p95 is a p50"] = (p50, "version_mode:http_request_duration_seconds:p95_rate5m")

    def attempt(item: tuple[str, tuple[Any, str]]) -> tuple[str, str, subprocess.CompletedProcess[str]]:
        label, (edit, needle) = item
        tests = broken_copy(tmp_path / re.sub(r"\W+", "-", label), edit)
        return label, needle, run([tool, "test", "rules", *map(str, sorted(tests.glob("*.yml")))])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, cases.items()))
    for label, needle, proc in results:
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"{label}: promtool still passes"
        assert "FAILED" in out and needle in out, f"{label}: {out[-2000:]}"


# --------------------------------------------------------------------------- the dashboard


def panels(ps: list[dict[str, Any]]):
    """Every panel, rows' nested panels included."""
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dash["panels"]) for t in p.get("targets", []) if "expr" in t]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables -> concrete values: ``$name`` and ``${name}``, longest names first."""
    for name in sorted(values, key=len, reverse=True):
        bare = name.lstrip("$")
        expr = expr.replace("${" + bare + "}", values[name]).replace(name, values[name])
    return expr


def test_dashboard_is_the_guides_canary_deployment_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "canary-deployment"  # the guide's http://localhost:3000/d/canary-deployment
    every = list(panels(dash["panels"]))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    nested = [p for r in dash["panels"] if r["type"] == "row" for p in r.get("panels", [])]
    assert nested, "the collapsed row's panels are nested, and walked"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "instance", "mode"}
    qs = queries(dash)
    assert len(qs) >= 20
    for title, expr in qs:
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= variables | {g.lstrip("$") for g in GRAFANA_VARIABLES}, (title, used)
    for p in every:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    text = " ".join(e for _, e in qs)
    for needle in ("canary_console_canary_weight_ratio", "canary_console_stage_index", "http_request_duration_seconds_bucket",
                   "http_requests_total", "llm_brief_schema_failures_total", "rl_training_loss"):
        assert needle in text, needle
    repeated = [r for r in dash["panels"] if r.get("repeat") == "mode"]
    assert repeated, "production vs canary, per mode"


def exporter_events():
    from console.core import events as ev
    from console.core.events import FAIL, INCONCLUSIVE, PASS, GateResult

    base = {"deployment_id": "v0.2.0-20260101T000000Z-abcd", "version": "v0.2.0"}
    gates = (
        GateResult("health", PASS, value=3.0, critical=True),
        GateResult("error_rate", PASS, value=0.001, threshold=0.005, production_value=0.0008),
        GateResult("critical_error_rate", PASS, value=0.001, threshold=0.01, critical=True),
        GateResult("p95_latency.fast", INCONCLUSIVE, value=0.2, threshold=2.5),
        GateResult("schema_failures", PASS, value=0.0, threshold=0.0),
        GateResult("rl_loss", FAIL, value=2.5, threshold=2.0),
        GateResult("seq.errors", INCONCLUSIVE, value=3.0, threshold=100.0, extra={"e_value": 3.0, "threshold": 100.0}),
    )
    return [
        ev.DeploymentStarted(stages=(1, 5, 25, 100), check_interval=1.0, observation_period=60.0, **base),
        ev.RouterApplied(weight=0, duration_ms=20.0, **base),
        ev.RouterApplied(weight=5, duration_ms=80.0, **base),
        ev.StageStarted(index=1, weight=5, total=4, observation_period=60.0, **base),
        ev.CheckCompleted(index=1, weight=5, results=gates, **base),
    ]


def prometheus_config(demo: list[str], exporter: str) -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in RULES],
        "scrape_configs": [
            {"job_name": "demo", "static_configs": [{"targets": demo}]},
            {"job_name": "canary-console", "static_configs": [{"targets": [exporter]}]},
        ],
    })


def api(prom, path: str, **params: str) -> dict[str, Any]:
    url = f"{prom.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 400 with Prometheus's own error for a query it rejects
        return json.loads(e.read())


def evaluated(prom) -> list[dict[str, Any]] | None:
    """The loaded rules once each has been evaluated (health no longer "unknown"), else None."""
    rules = [r for g in api(prom, "rules")["data"]["groups"] for r in g["rules"]]
    return rules if rules and all(r["health"] != "unknown" for r in rules) else None


@pytest.mark.real
def test_every_dashboard_query_is_accepted_by_a_real_prometheus(demo_services, prometheus_factory, monkeypatch):
    import asyncio

    import tests.fixtures.prometheus as fixture
    from console.adapters.exporter import Exporter
    from console.core.fakes import ScriptedChecker
    from tests.fixtures.real import wait_for

    production = demo_services("production", args=["--rl-loss", "0.3"])
    canary = demo_services("canary", args=["--rl-loss", "0.4"])
    exporter = Exporter("127.0.0.1", 0, linger=0)
    exporter.start()
    try:
        for e in exporter_events():
            exporter.observe(e)
        asyncio.run(exporter.timed(ScriptedChecker()).check(None))  # a check duration
        target = f"127.0.0.1:{exporter.bound_port}"
        config = prometheus_config([production.address, canary.address], target)
        monkeypatch.setattr(fixture, "render_config", lambda targets, interval="1s": config)
        prom = prometheus_factory([production.address, canary.address, target])
        for svc in (production, canary):
            for mode in ("fast", "balanced", "creative"):
                assert svc.generate(mode)[0] == 200
        # three scrapes of every target (rate() has samples), and every rule evaluated
        prom.wait_for("count_over_time(up[10s]) >= 3", lambda r: len(r) == 3, timeout=30)
        rules = wait_for(lambda: evaluated(prom), timeout=15, what="every rule evaluated once")
        assert len(rules) == len(rules_of("alert")) + len(rules_of("record"))
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]

        dash = json.loads(DASHBOARD.read_text())
        failures = []
        instance = target  # Grafana would escape the dots; unescaped they match themselves too
        for mode in ("fast", ".*"):  # one mode of the repeated row, and "All"
            values = {**GRAFANA_VARIABLES, "$instance": instance, "$mode": mode}
            for title, expr in queries(dash):
                q = substitute(expr, values)
                assert "$" not in q, (title, q)
                body = api(prom, "query", query=q)
                if body.get("status") != "success" or body.get("error"):
                    failures.append(f"{title}: {q}\n    {body.get('errorType')}: {body.get('error')}")
                elif not body["data"]["result"] and "> 0" not in q:  # only a "> 0" filter may be empty
                    failures.append(f"{title}: {q}\n    no data")
        assert not failures, "\n".join(failures)
        # the verdict panel's encoding, which its value mappings name: 0 PASS, 1 INCONCLUSIVE, 2 ERROR, 3 FAIL
        expr = next(e for title, e in queries(dash) if title == "Gate verdicts")
        got = {r["metric"]["gate"]: r["value"][1] for r in prom.query(substitute(expr, values))}
        assert got == {"health": "0", "error_rate": "0", "critical_error_rate": "0", "p95_latency.fast": "1",
                       "schema_failures": "0", "rl_loss": "3", "seq.errors": "1"}, got
    finally:
        exporter.close()


def test_substitution_replaces_both_forms():
    values = {**GRAFANA_VARIABLES, "$instance": "a:1", "$mode": "fast"}
    assert substitute('rate(x{mode=~"${mode}",instance=~"$instance"}[$__rate_interval])', values) == \
        'rate(x{mode=~"fast",instance=~"a:1"}[10s])'
