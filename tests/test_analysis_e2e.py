"""End to end: the sequential analysis rolls back a 10x error regression that the seed's
absolute gate lets through.

Two demo-service processes (production fails 0.045% of its requests, the canary 0.45%: ten
times more, deterministically), a real nginx in front of them, Poisson traffic through nginx,
a real Prometheus scraping both every second, and the real CLI
(``canary-console --config X deploy --version V --headless --json``) with the seed's gates at
their defaults beside the analysis.

Why this regression: the demo service fails every 1/rate-th request exactly, so a canary rate
at or above the seed's 0.5% trips the absolute gate at the canary's very first error, before
any relative test can have two.  What an absolute threshold cannot see at all is a canary that
is 10x worse than production while staying under 0.5%; the journal shows the error_rate gate
passing it on data at every check, up to and including the check at which seq.errors rolls it
back.  A healthy canary, run at the same time, must not be rolled back by the analysis.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from console.core.journal import read_records
from console.sandbox.traffic import BackgroundTraffic
from tests.fixtures.demo_services import start_demo_stack
from tests.fixtures.nginx import write_canary_toml
from tests.fixtures.prometheus import LocalPrometheus
from tests.fixtures.real import gate_of, journal_summary, need_binary, port_listening, spawn_headless_deploy, stop_group

pytestmark = [pytest.mark.real, pytest.mark.slow]  # minutes of real traffic: kept in CI

RPS = 100.0
MIX = {"fast": 1.0, "balanced": 1.0, "creative": 1.0}
PRODUCTION_ERROR_RATE = 0.00045
CANARY_ERROR_RATE = 0.0045  # 10x production, under the seed's 0.5%
STAGES = [50, 100]
REGRESSION_OBSERVATION = 180.0  # a cap: the analysis needs ~80-120 s of this traffic
HEALTHY_OBSERVATION = 60.0


@dataclass
class Run:
    name: str
    exit_code: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""
    traffic: dict[str, Any] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    error: str = ""

    def checks(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "check"]

    def one(self, kind: str) -> dict[str, Any]:
        found = [r for r in self.records if r.get("event") == kind]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}: {self.summary()}"
        return found[0]

    def summary(self) -> str:
        head = f"{self.name}: exit {self.exit_code} {self.error} traffic {self.traffic}"
        return f"{head}\n{journal_summary(self.records, 60, verbose=True)}\n{self.output[-1500:]}"




def deploy(name: str, d: Path, prometheus_bin: str, canary_error_rate: float, observation: float) -> Run:
    """One deployment through the real CLI; every process it starts is stopped before it returns."""
    run = Run(name)
    d.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            prod, canary, env = start_demo_stack(stack, d, run.ports, ["--error-rate", str(PRODUCTION_ERROR_RATE)],
                                                 ["--error-rate", str(canary_error_rate)])
            prom = LocalPrometheus(prometheus_bin, d / "prometheus", [prod.address, canary.address])
            stack.callback(prom.stop)
            run.ports.append(prom.port)
            prom.start().wait_targets_up()
            traffic = BackgroundTraffic(env.url, rps=RPS, mix=MIX, seed=7)
            stack.callback(lambda: run.traffic.update(traffic.stop().to_dict()))
            traffic.start()
            toml = write_canary_toml(
                d / "canary.toml", env,
                rollout={"stages": STAGES, "observation_period": observation, "check_interval": 2.0},
                metrics={"source": "prometheus", "query_timeout": 3.0},  # rate window, min_requests: defaults
                prometheus={"url": prom.url},
                analysis={"enabled": True},  # alpha, grid, tolerances: defaults
            )
            journal = d / ".canary" / "journal.jsonl"
            out_path = d / "cli.out"
            cli = spawn_headless_deploy(toml, d, out_path)
            stack.callback(stop_group, cli)
            deadline = time.monotonic() + observation + 60.0
            while cli.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)  # polling interval of a deadline loop
            if cli.poll() is None:
                run.error = f"the deployment did not end within {observation + 60:g}s"
            stop_group(cli)
            run.exit_code = cli.returncode
            run.records = list(read_records(journal))
            run.output = out_path.read_text(errors="replace")
        except Exception as e:  # reported by the test, after cleanup
            run.error = f"{type(e).__name__}: {e}"
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    need_binary("nginx")
    prometheus_bin = need_binary("prometheus")
    base = tmp_path_factory.mktemp("analysis-e2e")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="analysis-e2e") as pool:
        regression = pool.submit(deploy, "regression", base / "regression", prometheus_bin, CANARY_ERROR_RATE,
                                 REGRESSION_OBSERVATION)
        healthy = pool.submit(deploy, "healthy", base / "healthy", prometheus_bin, PRODUCTION_ERROR_RATE,
                              HEALTHY_OBSERVATION)
        out = {"regression": regression.result(), "healthy": healthy.result()}
    for run in out.values():
        assert not run.error, run.summary()
        assert not [p for p in run.ports if port_listening(p)], "every process of the run is gone"
        assert run.traffic.get("by_deployment", {}).get("canary", 0) > 0, "traffic through nginx reached the canary"
    return out


def test_a_10x_error_regression_under_the_absolute_threshold_is_rolled_back_by_seq_errors(runs: dict[str, Run]) -> None:
    run = runs["regression"]
    assert run.exit_code == 3, run.summary()
    rb = run.one("rolled_back")
    assert rb["reason"].startswith("seq.errors") and rb["automatic"], rb["reason"]
    decisive = next(c for c in run.checks() if c["decision"] == "rollback")
    assert decisive["weight"] == 50 and decisive["elapsed"] < REGRESSION_OBSERVATION, run.summary()
    seq = gate_of(decisive, "seq.errors")
    assert seq["verdict"] == "fail" and seq["critical"] and seq["value"] >= seq["threshold"] == pytest.approx(200.0)
    x = seq["extra"]
    canary_rate = x["canary_events"] / x["canary_requests"]
    production_rate = x["production_events"] / x["production_requests"]
    assert canary_rate > 4 * production_rate, x  # what the e-value measured is the 10x regression
    # the seed's absolute gate at that same check: it had the data, and it passed
    err = gate_of(decisive, "error_rate")
    assert err["verdict"] == "pass" and err["samples"] >= 20 and err["value"] < err["threshold"] == 0.005, err
    # ... and at every check before: it never failed, so it would not have rolled back at all
    for c in run.checks():
        assert gate_of(c, "error_rate")["verdict"] in ("pass", "inconclusive"), run.summary()
        assert gate_of(c, "critical_error_rate")["verdict"] in ("pass", "inconclusive"), run.summary()
    # the analysis' figures are journaled with every check
    firsts = [gate_of(c, "seq.errors") for c in run.checks()]
    assert all(g["verdict"] == "inconclusive" for g in firsts[:-1]) and firsts[-1]["verdict"] == "fail"
    assert all({"e_value", "threshold", "bound", "mde", "rho0"} <= set(g["extra"]) for g in firsts)
    assert any(r.get("event") == "router_applied" and r["weight"] == 0 for r in run.records)


def test_a_healthy_canary_is_not_rolled_back_by_the_analysis(runs: dict[str, Run]) -> None:
    run = runs["healthy"]
    assert run.exit_code == 0, run.summary()
    assert [r["weight"] for r in run.records if r.get("event") == "stage_passed"] == [50]
    for c in run.checks():
        for name in ("seq.errors", "seq.schema", "seq.latency"):
            g = gate_of(c, name)
            assert g["verdict"] in ("pass", "inconclusive") and not g["blocking"], run.summary()
    assert gate_of(run.checks()[-1], "seq.latency")["extra"]["edges"], "latency edges were fixed from production"
