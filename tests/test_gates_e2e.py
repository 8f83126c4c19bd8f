"""End to end: the real CLI rolls out a canary through a real nginx, judged on live metrics.

Per scenario and source, on its own ports: two demo-service processes (production 0.1.0,
canary 0.2.0), a real nginx in front of them (tests.fixtures.nginx), Poisson traffic through
nginx, a real Prometheus scraping both apps every second (or no Prometheus: the scrape
source), and ``canary-console deploy --headless --json`` in a subprocess with short stages
(checks every second, rate window 10 s, min_requests 5).  Assertions read the journal.

Every run starts as soon as the module's first test asks, all in parallel threads (each run
is mostly waiting), and each cleans up its own processes; the whole file takes well under
two minutes.  The sequential analysis is disabled: these tests are about the seed's gates.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from console.core.journal import read_records, tail_records
from tests.fixtures.demo_services import REPO, start_demo_stack
from tests.fixtures.nginx import write_canary_toml
from tests.fixtures.prometheus import LocalPrometheus
from tests.fixtures.real import gate_of, journal_summary, need_binary, port_listening, spawn_headless_deploy, stop_group

pytestmark = pytest.mark.real

RPS = 30.0
STAGES = [20, 50, 100]
HEALTHY_OBSERVATION = 10.0
FAILING_OBSERVATION = 60.0  # long, so that "well before it ends" means something
RUN_DEADLINE = 90.0


@dataclass(frozen=True)
class Scenario:
    canary_args: tuple[str, ...] = ()
    observation: float = FAILING_OBSERVATION
    gates: dict[str, Any] = field(default_factory=dict)
    act_after_first_check: str = ""  # "schema_failure" | "break_metrics"
    interrupt_on_hold: bool = False


SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario(observation=HEALTHY_OBSERVATION),
    "errors_5pct": Scenario(canary_args=("--error-rate", "0.05")),
    "fast_latency_3s": Scenario(canary_args=("--latency", "fast=3.0")),
    "one_schema_failure": Scenario(act_after_first_check="schema_failure"),
    "metrics_lost_hold": Scenario(act_after_first_check="break_metrics", interrupt_on_hold=True),
    "metrics_lost_rollback": Scenario(act_after_first_check="break_metrics", gates={"on_metrics_unavailable": "rollback"}),
}
SOURCES = ("prometheus", "scrape")


@dataclass
class Run:
    scenario: str
    source: str
    exit_code: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""
    acted_at: float | None = None  # observation seconds into the stage when the fault was applied
    traffic: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    ports: list[int] = field(default_factory=list)  # every port a process of this run listened on

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == kind]

    def checks(self) -> list[dict[str, Any]]:
        return self.events("check")

    def rolled_back(self) -> dict[str, Any]:
        rb = self.events("rolled_back")
        assert len(rb) == 1, f"expected one rollback, got {len(rb)}: {self.summary()}"
        return rb[0]

    def summary(self) -> str:
        head = f"{self.scenario}/{self.source}: exit {self.exit_code} {self.error}"
        return f"{head}\n{journal_summary(self.records, 80)}\n{self.output[-1500:]}"




def run_scenario(name: str, source: str, d: Path, prometheus_bin: str) -> Run:
    """One deployment, start to finish; every process it starts is stopped before it returns."""
    sc = SCENARIOS[name]
    run = Run(name, source)
    d.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            prod, canary, nginx_env = start_demo_stack(stack, d, run.ports, canary_args=sc.canary_args)
            prom: LocalPrometheus | None = None
            metrics: dict[str, Any] = {"source": source, "rate_window": "10s", "min_requests": 5, "query_timeout": 2.0}
            extra: dict[str, Any] = {}
            if source == "prometheus":
                prom = LocalPrometheus(prometheus_bin, d / "prometheus", [prod.address, canary.address])
                stack.callback(prom.stop)
                run.ports.append(prom.port)
                prom.start().wait_targets_up()
                extra["prometheus"] = {"url": prom.url}
            # traffic in its own process (python -m console.sandbox.traffic), as the demo sandbox runs it
            traffic = subprocess.Popen(
                [sys.executable, "-m", "console.sandbox.traffic", "--url", nginx_env.url, "--rps", str(RPS),
                 "--mix", "fast=1,balanced=1,creative=1", "--seed", str(sum(map(ord, name + source)))],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )

            def stop_traffic() -> None:
                stop_group(traffic)
                assert traffic.stdout is not None
                out = traffic.stdout.read().decode(errors="replace")
                traffic.stdout.close()
                with contextlib.suppress(ValueError, IndexError):
                    run.traffic.update(json.loads(out.strip().splitlines()[-1]))

            stack.callback(stop_traffic)
            toml = write_canary_toml(
                d / "canary.toml", nginx_env,
                rollout={"stages": STAGES, "observation_period": sc.observation, "check_interval": 1.0},
                metrics=metrics, scrape={"production": prod.metrics_url, "canary": canary.metrics_url, "timeout": 2.0},
                gates={"consecutive_failures": 3, "unavailable_after": 3, **sc.gates},
                analysis={"enabled": False}, **extra,
            )
            journal = d / ".canary" / "journal.jsonl"
            out_path = d / "cli.out"
            cli = spawn_headless_deploy(toml, d, out_path)
            stack.callback(stop_group, cli)
            deadline = time.monotonic() + RUN_DEADLINE
            interrupted = False
            offset, first_check, holding = 0, None, False
            while cli.poll() is None:
                if time.monotonic() > deadline:
                    run.error = f"the deployment did not end within {RUN_DEADLINE:g}s"
                    break
                new, offset = tail_records(journal, offset)
                for r in new:
                    if r.get("event") == "check" and first_check is None:
                        first_check = r
                    holding = holding or r.get("event") == "holding"
                if sc.act_after_first_check and run.acted_at is None and first_check is not None:
                    run.acted_at = first_check["elapsed"]
                    if sc.act_after_first_check == "schema_failure":
                        canary.faults(schema_failures=1)
                    elif source == "prometheus":
                        prom.stop()  # type: ignore[union-attr]
                    else:
                        canary.faults(metrics_down=True)  # the canary's exporter breaks: nothing to scrape
                if sc.interrupt_on_hold and not interrupted and holding:
                    interrupted = True
                    os.killpg(cli.pid, signal.SIGTERM)
                time.sleep(0.2)  # polling interval of a deadline loop
            stop_group(cli)
            run.exit_code = cli.returncode
            run.records = list(read_records(journal))
            run.output = out_path.read_text(errors="replace")
        except Exception as e:  # reported by the test, after cleanup
            run.error = f"{type(e).__name__}: {e}"
    return run


def _selected(request: pytest.FixtureRequest) -> list[tuple[str, str]]:
    keys = []
    for item in request.session.items:
        cs = getattr(item, "callspec", None)
        if item.module is request.module and cs is not None and "scenario" in cs.params and "source" in cs.params:
            keys.append((cs.params["scenario"], cs.params["source"]))
    return keys


@pytest.fixture(scope="module")
def e2e_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[tuple[str, str], Future[Run]]]:
    need_binary("nginx")
    keys = _selected(request)
    prometheus_bin = need_binary("prometheus") if any(s == "prometheus" for _, s in keys) else ""
    base = tmp_path_factory.mktemp("gates-e2e")
    pool = ThreadPoolExecutor(max_workers=max(1, len(keys)), thread_name_prefix="e2e")
    futures = {k: pool.submit(run_scenario, k[0], k[1], base / f"{k[0]}-{k[1]}", prometheus_bin) for k in keys}
    try:
        yield futures
    finally:
        pool.shutdown(wait=True)  # each run stops its own processes on every path


def get(e2e_runs: dict[tuple[str, str], Future[Run]], scenario: str, source: str) -> Run:
    run = e2e_runs[(scenario, source)].result(timeout=RUN_DEADLINE + 120)
    assert not run.error, run.summary()
    assert not [p for p in run.ports if port_listening(p)], "every process of the run is gone"
    assert run.traffic.get("by_deployment", {}).get("canary", 0) > 0, "traffic through nginx reached the canary"
    return run


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scenario", ["healthy"])
def test_a_healthy_canary_reaches_100(e2e_runs: Any, scenario: str, source: str) -> None:
    run = get(e2e_runs, scenario, source)
    assert run.exit_code == 0, run.summary()
    passed = run.events("stage_passed")
    assert [p["weight"] for p in passed] == [20, 50] and all(p["reason"] == "every gate passed on data" for p in passed)
    assert run.events("completed") and not run.events("rolled_back")
    # every check judged real data: no source error, and the stages passed on gates that passed
    for c in run.checks():
        assert all(g["verdict"] != "error" for g in c["results"]), run.summary()
    last_of_stage = {c["weight"]: c for c in run.checks()}
    for weight in (20, 50):
        blocking = [g for g in last_of_stage[weight]["results"] if g["blocking"]]
        assert {g["verdict"] for g in blocking} == {"pass"}, run.summary()
        assert gate_of(last_of_stage[weight], "error_rate")["samples"] >= 5
        assert gate_of(last_of_stage[weight], "error_rate")["window"] == "10s"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scenario", ["errors_5pct"])
def test_injected_errors_roll_back_early_naming_the_error_rate(e2e_runs: Any, scenario: str, source: str) -> None:
    run = get(e2e_runs, scenario, source)
    assert run.exit_code == 3, run.summary()
    rb = run.rolled_back()
    assert "error_rate" in rb["reason"] and rb["automatic"], rb["reason"]
    decisive = next(c for c in run.checks() if c["decision"] == "rollback")
    assert decisive["weight"] == 20 and decisive["elapsed"] < FAILING_OBSERVATION / 2, run.summary()
    crit = gate_of(decisive, "critical_error_rate")
    assert crit["verdict"] == "fail" and crit["value"] > 0.01 and crit["threshold"] == 0.01
    # the snapshot journals the last value of every gate, for both versions
    snap = {g["gate"]: g for g in rb["snapshot"]}
    assert {"error_rate", "critical_error_rate", "p95_latency.fast", "schema_failures", "health"} <= set(snap)
    assert snap["error_rate"]["production_value"] == 0.0
    assert any(r.get("event") == "router_applied" and r["weight"] == 0 for r in run.records)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scenario", ["fast_latency_3s"])
def test_fast_mode_latency_rolls_back_naming_fast_p95(e2e_runs: Any, scenario: str, source: str) -> None:
    run = get(e2e_runs, scenario, source)
    assert run.exit_code == 3, run.summary()
    rb = run.rolled_back()
    assert "p95_latency.fast" in rb["reason"] and "checks in a row" in rb["reason"], rb["reason"]
    decisive = next(c for c in run.checks() if c["decision"] == "rollback")
    assert decisive["elapsed"] < FAILING_OBSERVATION, "during the observation"
    fast = gate_of(decisive, "p95_latency.fast")
    assert fast["verdict"] == "fail" and fast["value"] > 2.5 and not fast["critical"]
    assert decisive["breaches"]["p95_latency.fast"] == 3
    assert gate_of(decisive, "p95_latency.balanced")["verdict"] in ("pass", "inconclusive")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scenario", ["one_schema_failure"])
def test_one_schema_failure_rolls_back_at_once(e2e_runs: Any, scenario: str, source: str) -> None:
    run = get(e2e_runs, scenario, source)
    assert run.exit_code == 3, run.summary()
    assert "schema_failures" in run.rolled_back()["reason"]
    seen = [c for c in run.checks() if gate_of(c, "schema_failures")["verdict"] == "fail"]
    assert seen, run.summary()
    assert seen[0]["decision"] == "rollback", "the first check that sees the failure rolls back"
    assert gate_of(seen[0], "schema_failures")["value"] >= 1 and gate_of(seen[0], "schema_failures")["critical"]
    before = [c for c in run.checks() if c["elapsed"] <= (run.acted_at or 0)]
    assert before and all(gate_of(c, "schema_failures")["verdict"] != "fail" for c in before)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scenario", ["metrics_lost_hold"])
def test_lost_metrics_hold_and_are_journaled(e2e_runs: Any, scenario: str, source: str) -> None:
    run = get(e2e_runs, scenario, source)
    assert run.exit_code == 130, run.summary()  # held, then interrupted by the test: traffic stays where it is
    holding = run.events("holding")
    assert holding and "metrics unavailable for 3 checks" in holding[0]["reason"], run.summary()
    errors = [c for c in run.checks() if gate_of(c, "error_rate")["verdict"] == "error"]
    assert len(errors) >= 3
    detail = gate_of(errors[0], "error_rate")["detail"]
    assert ("unreachable" in detail) if source == "prometheus" else ("HTTP 503" in detail), detail
    assert not run.events("rolled_back") and not run.events("stage_passed")
    assert run.events("interrupted")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scenario", ["metrics_lost_rollback"])
def test_lost_metrics_roll_back_when_configured(e2e_runs: Any, scenario: str, source: str) -> None:
    run = get(e2e_runs, scenario, source)
    assert run.exit_code == 3, run.summary()
    reason = run.rolled_back()["reason"]
    assert "metrics unavailable for 3 checks" in reason, reason
    assert not run.events("stage_passed")
