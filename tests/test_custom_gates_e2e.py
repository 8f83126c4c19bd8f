"""End to end: a service the guide knows nothing about, judged by its custom gates alone.

Per scenario, on its own ports: two processes of ``tests/fixtures/instrumented_app.py``
(production 0.1.0, canary 0.2.0), a Starlette app instrumented by starlette-exporter (PyPI)
with the library's own metric names and no version label; a real nginx in front of them;
Poisson traffic through nginx; a real Prometheus scraping both every second, whose scrape
config (``static_configs`` labels) gives each target its ``version``; and the real CLI
``deploy --headless --json`` with ``[gates] builtin = false``, ``[analysis] enabled = false``
and ``[[gates.custom]]`` on ``starlette_request_duration_seconds`` and
``starlette_requests_total`` (rate window 5 s, checks every 0.5-1 s).  Assertions read the
journal.

* a healthy canary reaches 100% (exit 0);
* +300 ms on the canary, injected once its p95 gate has passed, rolls back on ``custom.p95``
  (exit 3);
* +300 ms on both versions, with the p95 gate ``relative = true``, does not roll back (exit 0),
  although the canary's p95 is above what the absolute gate allows;
* a query Prometheus rejects: ``deploy`` exits 4 at its preflight naming the gate and
  Prometheus' own error (with and without ``--skip-checks``) and changes nothing; ``check``
  shows it as a FAIL row.

The scenarios run in parallel threads (each is mostly waiting); every process each one
starts is stopped before it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from console.core.journal import read_records, tail_records
from console.sandbox.traffic import BackgroundTraffic
from tests.fixtures.instrumented_app import REPO, start_instrumented_app
from tests.fixtures.nginx import start_nginx_env, write_canary_toml
from tests.fixtures.prometheus import LocalPrometheus
from tests.fixtures.real import gate_of, journal_summary, need_binary, port_listening, spawn_headless_deploy, stop_group, wait_for

pytestmark = pytest.mark.real

RPS = 20.0
STAGES = [25, 50, 100]
WINDOW = "5s"
SLOW = 0.3  # seconds added to every /api/generate: p95 lands in the (0.25, 0.5] bucket
ABSOLUTE_P95 = 0.2
RUN_DEADLINE = 60.0
BUILTIN = {"error_rate", "critical_error_rate", "schema_failures", "rl_loss"}

API = 'path="/api/generate"'
P95 = ("histogram_quantile(0.95, sum by (le) (rate(starlette_request_duration_seconds_bucket"
       f'{{version="$version",{API}}}[$window])))')
ERRORS = (f'(sum(rate(starlette_requests_total{{version="$version",{API},status_code=~"5.."}}[$window])) or vector(0))'
          f' / sum(rate(starlette_requests_total{{version="$version",{API}}}[$window]))')
SAMPLES = f'sum(increase(starlette_requests_total{{version="$version",{API}}}[$window]))'


def custom_gate(name: str, query: str, compare: str, threshold: float, **kw: Any) -> str:
    lines = ["[[gates.custom]]", f"name = {json.dumps(name)}", f"query = {json.dumps(query)}",
             f"compare = {json.dumps(compare)}", f"threshold = {threshold!r}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


ERROR_GATE = custom_gate("errors", ERRORS, "<", 0.01, critical=True, min_samples_query=SAMPLES, min_samples=5)
ABSOLUTE = custom_gate("p95", P95, "<=", ABSOLUTE_P95, min_samples_query=SAMPLES, min_samples=5) + "\n" + ERROR_GATE
RELATIVE = custom_gate("p95", P95, "<=", 1.5, relative=True, min_samples_query=SAMPLES, min_samples=5) + "\n" + ERROR_GATE
BROKEN = ABSOLUTE + "\n" + custom_gate("broken", 'sum(rate(starlette_requests_total{version="$version"}[$window])', "<", 1.0)


@dataclass(frozen=True)
class Scenario:
    gates: str
    observation: float
    check_interval: float = 0.5
    consecutive_failures: int = 2
    slow: tuple[str, ...] = ()  # which versions get +SLOW once custom.p95 has passed on data
    rejected: bool = False


SCENARIOS = {
    "healthy": Scenario(ABSOLUTE, observation=4.0),
    "canary_slower": Scenario(ABSOLUTE, observation=30.0, slow=("canary",)),
    "both_slower_relative": Scenario(RELATIVE, observation=6.0, check_interval=1.0, consecutive_failures=3,
                                     slow=("canary", "production")),
    "rejected_query": Scenario(BROKEN, observation=4.0, rejected=True),
}


class VersionedPrometheus(LocalPrometheus):
    """A LocalPrometheus whose scrape config, not the apps, gives each target its ``version``
    label (``static_configs`` with ``labels``), as a real deployment's Prometheus does."""

    JOB = "instrumented"

    def __init__(self, binary: str, directory: Path, by_version: dict[str, str]) -> None:
        super().__init__(binary, directory, list(by_version.values()))
        self.by_version = dict(by_version)

    def config(self) -> str:
        lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s", "  scrape_timeout: 1s",
                 "scrape_configs:", f"  - job_name: {self.JOB}", "    metrics_path: /metrics", "    static_configs:"]
        for version, target in self.by_version.items():
            lines += [f"      - targets: [{json.dumps(target)}]", f"        labels: {{version: {json.dumps(version)}}}"]
        return "\n".join(lines) + "\n"

    def start(self) -> VersionedPrometheus:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "prometheus.yml"
        conf.write_text(self.config())
        argv = [self.binary, f"--config.file={conf}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"prometheus exited: {self.log()[-2000:]}"
            with contextlib.suppress(OSError, ValueError, KeyError):
                return len(self.query(f'up{{job="{self.JOB}"}} == 1')) == len(self.by_version)
            return False

        try:
            wait_for(ready, 30.0, "prometheus to scrape both apps", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self


@dataclass
class Run:
    scenario: str
    exit_code: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""
    acted_at: float | None = None  # observation seconds into the stage when the slowdown began
    traffic: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    ports: list[int] = field(default_factory=list)
    upstream_unchanged: bool | None = None
    deploy_checked: subprocess.CompletedProcess[str] | None = None  # rejected: deploy with its pre-deployment checks
    check: subprocess.CompletedProcess[str] | None = None  # rejected: `canary-console check`
    history: subprocess.CompletedProcess[str] | None = None  # `history --json` after the run
    replay: subprocess.CompletedProcess[str] | None = None  # `replay ID` after the run (no terminal: the event log)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == kind]

    def checks(self) -> list[dict[str, Any]]:
        return self.events("check")

    def summary(self) -> str:
        return f"{self.scenario}: exit {self.exit_code} {self.error}\n{journal_summary(self.records, 80, verbose=True)}\n" \
               f"{self.output[-1500:]}"


def cli(toml: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(toml), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def passed_on_data(check: dict[str, Any]) -> bool:
    return gate_of(check, "custom.p95")["verdict"] == "pass"


def run_scenario(name: str, d: Path, prometheus_bin: str) -> Run:
    """One deployment, start to finish; every process it starts is stopped before it returns."""
    sc = SCENARIOS[name]
    run = Run(name)
    d.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            apps = {}
            for deployment, version in (("production", "0.1.0"), ("canary", "0.2.0")):
                apps[deployment] = start_instrumented_app(d / "logs", deployment, version)
                stack.callback(apps[deployment].stop)
                run.ports.append(apps[deployment].port)
            backends = SimpleNamespace(**{k: SimpleNamespace(address=a.address, url=a.url) for k, a in apps.items()})
            nginx_env = start_nginx_env(d, backends)  # type: ignore[arg-type]  # duck-typed Backends
            stack.callback(nginx_env.nginx.stop)
            run.ports.append(nginx_env.nginx.listen_port)
            prom = VersionedPrometheus(prometheus_bin, d / "prometheus", {k: a.address for k, a in apps.items()})
            stack.callback(prom.stop)
            run.ports.append(prom.port)
            prom.start()
            traffic = BackgroundTraffic(nginx_env.url, rps=RPS, seed=sum(map(ord, name)), max_seconds=RUN_DEADLINE + 30)
            traffic.start()

            def stop_traffic() -> None:
                run.traffic = traffic.stop().to_dict()

            stack.callback(stop_traffic)
            toml = write_canary_toml(
                d / "canary.toml", nginx_env,
                rollout={"stages": STAGES, "observation_period": sc.observation, "check_interval": sc.check_interval},
                metrics={"source": "prometheus", "rate_window": WINDOW, "min_requests": 5, "query_timeout": 2.0},
                prometheus={"url": prom.url},
                gates={"builtin": False, "consecutive_failures": sc.consecutive_failures, "unavailable_after": 3},
                analysis={"enabled": False},
            )
            with open(toml, "a") as f:
                f.write("\n" + sc.gates)
            journal = d / ".canary" / "journal.jsonl"
            before = nginx_env.upstream_file.read_bytes()
            if sc.rejected:  # the pre-deployment checks first (deploy without --skip-checks), then the engine's preflight
                run.deploy_checked = cli(toml, d, "deploy", "--version", "v0.2.0", "--headless", "--json", "--foreground")
            out_path = d / "cli.out"
            proc = spawn_headless_deploy(toml, d, out_path)
            stack.callback(stop_group, proc)
            deadline = time.monotonic() + RUN_DEADLINE
            offset = 0
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    run.error = f"the deployment did not end within {RUN_DEADLINE:g}s"
                    break
                new, offset = tail_records(journal, offset)
                if sc.slow and run.acted_at is None:
                    first = next((r for r in new if r.get("event") == "check" and passed_on_data(r)), None)
                    if first is not None:
                        run.acted_at = first["elapsed"]
                        for deployment in sc.slow:
                            apps[deployment].set_latency(SLOW)
                time.sleep(0.1)  # polling interval of a deadline loop
            stop_group(proc)
            run.exit_code = proc.returncode
            run.records = list(read_records(journal))
            run.output = out_path.read_text(errors="replace")
            run.upstream_unchanged = nginx_env.upstream_file.read_bytes() == before
            if sc.rejected:  # last: check's own router preflight rewrites the file (same weights, new generation)
                run.check = cli(toml, d, "check", "--version", "v0.2.0")
            elif run.records:
                run.history = cli(toml, d, "history", "--json")
                run.replay = cli(toml, d, "replay", run.records[0]["deployment_id"])
        except Exception as e:  # reported by the test, after cleanup
            run.error = f"{type(e).__name__}: {e}"
    return run


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Run]]]:
    need_binary("nginx")
    prometheus_bin = need_binary("prometheus")
    pytest.importorskip("starlette_exporter", reason="pip install -e '.[dev]' (starlette-exporter)")
    base = tmp_path_factory.mktemp("custom-gates-e2e")
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS), thread_name_prefix="custom-e2e")
    futures = {k: pool.submit(run_scenario, k, base / k, prometheus_bin) for k in SCENARIOS}
    try:
        yield futures
    finally:
        pool.shutdown(wait=True)  # each run stops its own processes on every path


def get(e2e_runs: dict[str, Future[Run]], scenario: str) -> Run:
    run = e2e_runs[scenario].result(timeout=RUN_DEADLINE + 120)
    assert not run.error, run.summary()
    assert not [p for p in run.ports if port_listening(p)], "every process of the run is gone"
    return run


def custom_only(run: Run) -> None:
    """Judged by the custom gates and health: none of the guide's gates, no sequential analysis."""
    for c in run.checks():
        names = {g["gate"] for g in c["results"]}
        assert {"custom.p95", "custom.errors", "health"} <= names, run.summary()
        assert not names & BUILTIN and not any(n.startswith(("p95_latency", "seq.")) for n in names), names


@pytest.mark.slow
def test_a_healthy_canary_reaches_100_on_custom_gates(e2e_runs: Any) -> None:
    run = get(e2e_runs, "healthy")
    assert run.exit_code == 0, run.summary()
    assert [p["weight"] for p in run.events("stage_passed")] == [25, 50], run.summary()
    assert run.events("completed") and not run.events("rolled_back")
    assert run.traffic["by_deployment"].get("canary", 0) > 0, "traffic through nginx reached the canary"
    custom_only(run)
    for c in run.checks():
        assert all(g["verdict"] != "error" for g in c["results"]), run.summary()
    last = {c["weight"]: c for c in run.checks()}
    for weight in (25, 50):
        p95 = gate_of(last[weight], "custom.p95")
        assert p95["verdict"] == "pass" and p95["value"] <= ABSOLUTE_P95 and p95["samples"] >= 5, p95
        assert p95["window"] == WINDOW and p95["threshold"] == ABSOLUTE_P95
        assert 'version="canary"' in p95["extra"]["query"] and "[5s]" in p95["extra"]["query"]
        assert p95["production_value"] is not None
        assert gate_of(last[weight], "custom.errors")["value"] == 0.0


def test_a_latency_regression_in_the_canary_rolls_back_on_its_custom_gate(e2e_runs: Any) -> None:
    run = get(e2e_runs, "canary_slower")
    assert run.exit_code == 3, run.summary()
    assert run.acted_at is not None, "the slowdown was injected once custom.p95 passed on data"
    (rb,) = run.events("rolled_back")
    assert rb["reason"].startswith("custom.p95 ") and "checks in a row" in rb["reason"] and rb["automatic"], rb["reason"]
    decisive = next(c for c in run.checks() if c["decision"] == "rollback")
    p95 = gate_of(decisive, "custom.p95")
    assert p95["verdict"] == "fail" and p95["value"] > ABSOLUTE_P95 and not p95["critical"], p95
    assert p95["production_value"] < ABSOLUTE_P95, "production stayed fast"
    assert decisive["breaches"]["custom.p95"] == 2 and decisive["weight"] == 25
    assert decisive["elapsed"] < SCENARIOS["canary_slower"].observation, "during the observation"
    assert {"custom.p95", "custom.errors", "health"} <= {g["gate"] for g in rb["snapshot"]}
    assert any(r.get("event") == "router_applied" and r["weight"] == 0 for r in run.records)
    custom_only(run)
    # history, replay and the decision panel show them like any gate
    assert run.history is not None and run.history.returncode == 0, run.history
    assert "custom.p95" in json.dumps(json.loads(run.history.stdout)), run.history.stdout
    assert run.replay is not None and run.replay.returncode == 0, run.replay
    assert "custom.p95 FAIL" in run.replay.stdout and "rolled back" in run.replay.stdout.lower(), run.replay.stdout[-2000:]
    from console.core.state import events_of, fold
    from console.ui.present import decision_rows

    st = fold(events_of(run.records, run.records[0]["deployment_id"]))
    assert {"custom.p95", "custom.errors"} <= {row.result.gate for row in decision_rows(st)}


def test_a_slowdown_of_both_versions_does_not_roll_back_a_relative_gate(e2e_runs: Any) -> None:
    run = get(e2e_runs, "both_slower_relative")
    assert run.exit_code == 0, run.summary()
    assert run.acted_at is not None and not run.events("rolled_back"), run.summary()
    assert [p["weight"] for p in run.events("stage_passed")] == [25, 50], run.summary()
    custom_only(run)
    slow = [gate_of(c, "custom.p95") for c in run.checks() if c["weight"] == 50]
    assert slow and all(g["verdict"] == "pass" for g in slow[-2:]), run.summary()
    last = slow[-1]
    # an absolute gate would have failed: both versions are slow, the canary no slower than production
    assert last["value"] > ABSOLUTE_P95 and last["production_value"] > ABSOLUTE_P95, last
    assert last["extra"]["relative"] is True and last["threshold"] == pytest.approx(1.5 * last["production_value"])


def test_a_query_prometheus_rejects_stops_deploy_and_fails_check(e2e_runs: Any) -> None:
    run = get(e2e_runs, "rejected_query")
    # the engine's own preflight (--skip-checks): exit 4, before any router change
    assert run.exit_code == 4, run.summary()
    (failed,) = run.events("failed")
    reason = failed["reason"]
    assert reason.startswith("preflight: custom.broken query (canary): Prometheus rejected the query (HTTP 400: "), reason
    assert "parse error" in reason and reason.endswith("nothing was changed"), reason
    assert not [r for r in run.records if r.get("event") in ("router_intent", "router_applied", "check")]
    assert run.upstream_unchanged, "the upstream file is byte for byte what it was"
    # deploy with its pre-deployment checks stops there: exit 4, the row names the gate and Prometheus' error
    assert run.deploy_checked is not None and run.deploy_checked.returncode == 4, run.deploy_checked
    row = next(ln for ln in run.deploy_checked.stderr.splitlines() if ln.startswith("custom gate broken"))
    assert " FAIL " in row and "parse error" in row, row
    assert "1 pre-deployment check(s) failed; nothing was changed" in run.deploy_checked.stderr, run.deploy_checked.stderr
    # `check`: one row per custom gate; the guide's metric rows are not read here
    assert run.check is not None and run.check.returncode == 1, run.check.stdout + run.check.stderr
    rows = {ln.split("  ")[0]: ln for ln in run.check.stdout.splitlines()}
    assert " FAIL " in rows["custom gate broken"] and "Prometheus rejected the query (HTTP 400" in rows["custom gate broken"]
    assert " PASS " in rows["custom gate p95"] or " WARN " in rows["custom gate p95"], rows
    assert " PASS " in rows["custom gate errors"] or " WARN " in rows["custom gate errors"], rows
    assert " SKIP " in rows["metrics canary"] and "builtin = false" in rows["metrics canary"], rows
